"""The PostgreSQL store: N receiver processes on one database.

Tasks, deliveries and polls (store.postgres.tasks) with the ack path's group commit
(store.postgres.writer); fan-out (store.postgres.fanout); kept result files
(store.postgres.captures); retention (store.postgres.retention); change sets written by
store.postgres.changes; the pool, migrations and cross-process wake-ups in store.postgres.base.
"""

from __future__ import annotations

from store.postgres.captures import CaptureStore
from store.postgres.fanout import FanoutStore
from store.postgres.retention import RetentionStore
from store.postgres.tasks import TaskStore

__all__ = ["PostgresStore"]


class PostgresStore(TaskStore, FanoutStore, CaptureStore, RetentionStore):
    """Every invariant of the SQLite store, across processes: copies of one delivery are applied
    once (task rows locked, dedupe keys unique), work is claimed with leases that leave the due
    range, and readers follow commit order."""
