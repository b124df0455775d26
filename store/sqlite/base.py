"""The SQLite store's shared machinery: its lifecycle, the writer, and the read helpers."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from receiver.errors import StoreUnavailable, UnknownCursor
from receiver.rules.records import Page
from store.sqlite.migrations import migrate
from store.sqlite.writer import Writer

__all__ = ["SQLiteBase"]

T = TypeVar("T")


def _prepare(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: the commit that precedes an acknowledgement survives power loss, not only a crash.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    # Index pages touched by inserts at random places (dedupe keys, video ids) stay in memory.
    conn.execute("PRAGMA cache_size = -65536")
    conn.execute("PRAGMA mmap_size = 268435456")
    # The WAL file is cut back to this size whenever a checkpoint starts it over. Without a limit
    # it keeps the largest size it ever reached: a busy minute in which readers kept checkpoints
    # from starting over left it at 14 MiB in a soak (a quarter of the store), for good.
    conn.execute("PRAGMA journal_size_limit = 8388608")
    migrate(conn)


class SQLiteBase:
    """Writes go through one writer thread in batches; reads through one aiosqlite connection
    (its own thread). Nothing runs a statement on the event loop."""

    def __init__(self, path: str) -> None:
        if path == ":memory:":
            raise ValueError("the SQLite store needs a file path (WAL is shared between connections)")
        self._path = path
        self._writer = Writer(path, _prepare)
        self._reader: aiosqlite.Connection | None = None

    async def open(self) -> None:
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        await self._writer.start()
        self._reader = await aiosqlite.connect(self._path)
        self._reader.row_factory = aiosqlite.Row
        await self._reader.execute("PRAGMA query_only = ON")

    async def close(self) -> None:
        await self._writer.stop()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    async def ping(self) -> None:
        await self._write(lambda conn: conn.execute("SELECT 1").fetchone())

    def on_change(self, listener: Callable[[str], None]) -> None:
        """One process owns the file: every change is made here, so there is nothing to hear."""

    async def _write(self, unit: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        return await self._writer.run(unit, durable=durable)

    async def _fetchall(self, sql: str, params: tuple[Any, ...] = ()) -> list[aiosqlite.Row]:
        if self._reader is None:
            raise StoreUnavailable("the store is not open")
        # One call that steps the statement to its end: a cursor left open across awaits would
        # hold a read snapshot that every other read on this connection then shares (stale reads).
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"the store could not read: {exc}") from None

    async def _counts(self, kind: str) -> list[aiosqlite.Row]:
        """The counts migration 11's triggers keep for `kind` (tasks, outbox, captures): a few rows,
        whatever the store's size."""
        return await self._fetchall("SELECT status, resolved_by, n FROM counts WHERE kind = ?", (kind,))

    async def fold_counts(self) -> None:
        """Counts are kept in place here (one writer): nothing to fold."""

    async def _cursor(self, table: str, column: str, value: str) -> int:
        """The pk of the row a list's `after` names (UnknownCursor when none does)."""
        found = await self._fetchall(f"SELECT pk FROM {table} WHERE {column} = ?", (value,))
        if not found:
            raise UnknownCursor(value)
        return int(found[0]["pk"])

    async def _page(
        self,
        select: str,
        pk: str,
        where: list[str],
        params: list[Any],
        limit: int,
        build: Callable[[aiosqlite.Row], Any],
    ) -> Page:
        """Newest first, one row more than asked to know whether there is more."""
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._fetchall(f"{select}{clause} ORDER BY {pk} DESC LIMIT ?", (*params, limit + 1))
        return Page([build(r) for r in rows[:limit]], len(rows) > limit)
