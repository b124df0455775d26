"""Persistence behind one interface: the Store protocol, its records and errors, and open_store(url).

The store keeps rows; receiver.core decides what each write does. One package per backend:
store.sqlite (the embedded default, one process) and store.postgres (N processes, one database).
"""

from __future__ import annotations

from store.errors import OverLimit, StoreError, StoreUnavailable, UnknownCursor, UnknownToken, WrongVideo
from store.protocol import Store
from store.records import (
    Attempt,
    AttemptRow,
    CaptureOutcome,
    CaptureRow,
    CreateResult,
    DeliveryResult,
    DeliveryRow,
    EventRow,
    HistoryRow,
    NewDelivery,
    NewEvent,
    NewTask,
    OutboxJob,
    OutboxRow,
    OutboxStats,
    Page,
    PruneRun,
    ReplayFilter,
    SubscriptionRow,
    TaskChange,
    TaskRow,
    TaskStats,
)

__all__ = [
    "Attempt",
    "AttemptRow",
    "CaptureOutcome",
    "CaptureRow",
    "CreateResult",
    "DeliveryResult",
    "DeliveryRow",
    "EventRow",
    "HistoryRow",
    "NewDelivery",
    "NewEvent",
    "NewTask",
    "OutboxJob",
    "OutboxRow",
    "OutboxStats",
    "OverLimit",
    "Page",
    "PruneRun",
    "ReplayFilter",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "SubscriptionRow",
    "TaskChange",
    "TaskRow",
    "TaskStats",
    "UnknownCursor",
    "UnknownToken",
    "WrongVideo",
    "open_store",
]


def open_store(url: str) -> Store:
    """The store for a RECEIVER_DATABASE_URL (call `await store.open()` before use)."""
    if url.startswith("sqlite://"):
        from store.sqlite import SQLiteStore

        path = url[len("sqlite://") :]
        if path.startswith("/"):
            path = path[1:]  # sqlite:///rel.db -> rel.db; sqlite:////abs.db -> /abs.db
        return SQLiteStore(path or ":memory:")
    if url.startswith(("postgresql://", "postgres://")):
        from store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported store URL scheme: {url.split(':', 1)[0]!r}")
