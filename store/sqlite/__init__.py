"""The embedded SQLite store: one process, WAL, one writer thread that groups commits."""

from __future__ import annotations

from store.sqlite.captures import CaptureStore
from store.sqlite.fanout import FanoutStore
from store.sqlite.retention import RetentionStore
from store.sqlite.tasks import TaskStore

__all__ = ["SQLiteStore"]


class SQLiteStore(TaskStore, FanoutStore, CaptureStore, RetentionStore):
    """Tasks, deliveries and polls (store.sqlite.tasks); fan-out (store.sqlite.fanout); kept
    result files (store.sqlite.captures); retention (store.sqlite.retention); one
    writer (store.sqlite.writer) and schema versions (store.sqlite.migrations) under both."""
