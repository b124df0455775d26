"""Persistence behind one interface: the Store protocol and open_store(url).

The store keeps rows in the records of receiver.rules.records and raises the StoreError branch
of receiver.errors; receiver.rules.decide decides what each write does. One package per backend:
store.sqlite (the embedded default, one process) and store.postgres (N processes, one database).
"""

from __future__ import annotations

from store.protocol import Store

__all__ = ["Store", "open_store"]


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
