"""The PostgreSQL store's shared machinery: the pool, migrations, wake-ups across processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import asyncpg

from receiver.errors import StoreUnavailable, UnknownCursor
from receiver.rules.records import Page

__all__ = ["CHANNEL", "PostgresBase", "guard", "keep_session", "migrate"]

log = logging.getLogger("receiver.store")

CHANNEL = "receiver"
# Processes x POOL_SIZE must stay well under the server's max_connections (100 by default):
# 4 to 64 connections measured the same rate per process (one writer does the hot path).
POOL_SIZE = 8
ACQUIRE_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
_MIGRATION_LOCK = 0x7265636569766572  # "receiver": one key for every process's migrations
_FOLD_LOCK = 0x7265636F756E7473  # "recounts": one process folds the appended count changes at a time
# InternalClientError: asyncpg's word for a connection that broke mid-protocol (the server
# terminated it), which is an outage like the others, not a bug of ours.
_UNAVAILABLE = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)


@contextlib.asynccontextmanager
async def guard() -> AsyncIterator[None]:
    """Database and connection failures become StoreUnavailable (a 503 for the caller)."""
    try:
        yield
    except _UNAVAILABLE as exc:
        log.warning("store: %s", type(exc).__name__)
        raise StoreUnavailable(f"the store is unavailable ({type(exc).__name__})") from None


def _steps() -> list[str]:
    text = resources.files("store.postgres").joinpath("schema.sql").read_text("utf-8")
    return [p for p in re.split(r"^-- migration \d+:.*$", text, flags=re.M) if p.strip()]


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply what is missing, under an advisory lock: N processes may start at once."""
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS receiver_migrations"
            " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await conn.fetchval("SELECT coalesce(max(version), 0) FROM receiver_migrations")
        steps = _steps()
        for number, script in enumerate(steps[done:], start=done + 1):
            async with conn.transaction():
                await conn.execute(script)
                await conn.execute("INSERT INTO receiver_migrations (version) VALUES ($1)", number)
        return len(steps)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


async def keep_session(_conn: asyncpg.Connection) -> None:
    """A connection goes back to the pool as it is: this store sets no session state (no SET,
    LISTEN, cursor or session-level lock on a pooled connection; an open transaction is still
    rolled back by the pool). asyncpg's default reset costs a round trip on every release,
    about 1 ms under load: as much as a batch's read."""


class PostgresBase:
    """One bounded pool per process; one dedicated connection LISTENs for the others' news."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._pool: asyncpg.Pool | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._listen_task: asyncio.Task[None] | None = None
        self._news: set[str] = set()  # topics to announce to every process
        self._announcer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            conn = await asyncpg.connect(self._url, timeout=ACQUIRE_TIMEOUT)
        except (*_UNAVAILABLE, ValueError) as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL ({type(exc).__name__})") from None
        try:
            await migrate(conn)
        finally:
            await conn.close()
        self._pool = await asyncpg.create_pool(
            self._url,
            min_size=2,
            max_size=POOL_SIZE,
            command_timeout=COMMAND_TIMEOUT,
            reset=keep_session,
        )
        self._listen_task = asyncio.create_task(self._listen(), name="store-listener")

    async def close(self) -> None:
        if self._announcer is not None:
            with contextlib.suppress(Exception):
                await self._announcer
            self._announcer = None
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
            self._listen_task = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> None:
        async with self._tx() as conn:
            await conn.execute("SELECT 1")

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call `listener(topic)` when any process commits news ("events", "outbox", "tasks")."""
        self._listeners.append(listener)

    async def _listen(self) -> None:
        """LISTEN on a connection of its own, reconnecting; while it is down, the workers' own
        timers are the fallback (a notification sent meanwhile is lost, a poll is not)."""

        def heard(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            for topic in payload.split(","):
                self._notify_local(topic)

        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._url, timeout=ACQUIRE_TIMEOUT)
                await conn.add_listener(CHANNEL, heard)
                for topic in ("events", "outbox", "tasks"):
                    self._notify_local(topic)  # what was missed while disconnected
                while not conn.is_closed():
                    await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("store listener: %s; reconnecting", type(exc).__name__)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(1.0)

    def announce(self, topics: str) -> None:
        """Tell every process (this one too, through its LISTEN) that `topics` have news, after
        the commit that made it: one NOTIFY at a time, carrying whatever queued meanwhile. Its
        own small transaction writes nothing, so it holds the notification lock only briefly;
        a NOTIFY inside a batch holds it through that commit's flush and serialises the
        commits of every writer in the fleet. A lost one is covered by the workers' timers."""
        self._news.update(topics.split(","))
        if self._announcer is None or self._announcer.done():
            self._announcer = asyncio.create_task(self._announce(), name="store-announcer")

    async def _announce(self) -> None:
        while self._news and self._pool is not None:
            topics = ",".join(sorted(self._news))
            self._news.clear()
            try:
                await self._pool.execute("SELECT pg_notify($1, $2)", CHANNEL, topics, timeout=COMMAND_TIMEOUT)
            except _UNAVAILABLE as exc:
                log.warning("store: could not announce %s (%s)", topics, type(exc).__name__)
                for topic in topics.split(","):
                    self._notify_local(topic)  # this process at least

    def _notify_local(self, topic: str) -> None:
        for listener in self._listeners:
            listener(topic)

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection in a transaction (READ COMMITTED), failures mapped to StoreUnavailable."""
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        async with guard(), self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn, conn.transaction():
            yield conn

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        async with guard():
            return list(await self._pool.fetch(sql, *args, timeout=COMMAND_TIMEOUT))

    async def _counts(self, kind: str) -> list[asyncpg.Record]:
        """The counts migration 7's triggers keep for `kind` (tasks, outbox, captures): the folded
        rows plus the changes appended since the last fold."""
        return await self._fetch(
            "SELECT status, resolved_by, sum(n) AS n FROM (SELECT status, resolved_by, n FROM counts"
            " WHERE kind = $1 UNION ALL SELECT status, resolved_by, n FROM count_changes WHERE kind = $1) c"
            " GROUP BY status, resolved_by",
            kind,
        )

    async def fold_counts(self) -> None:
        async with self._tx() as conn:
            # One folder at a time: another process that finds the lock taken leaves the changes
            # to it. A change committed after this statement's snapshot stays for the next fold.
            if await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _FOLD_LOCK):
                await conn.execute(
                    "WITH moved AS (DELETE FROM count_changes RETURNING kind, status, resolved_by, n)"
                    " INSERT INTO counts (kind, status, resolved_by, n)"
                    " SELECT kind, status, resolved_by, sum(n) FROM moved GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
                    " ON CONFLICT (kind, status, resolved_by) DO UPDATE SET n = counts.n + excluded.n",
                    timeout=COMMAND_TIMEOUT,
                )

    async def _page(
        self,
        select: str,
        order: str,
        where: list[str],
        args: list[Any],
        limit: int,
        build: Callable[[asyncpg.Record], Any],
    ) -> Page:
        """Newest first, one row more than asked to know whether there is more."""
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        args = [*args, limit + 1]
        found = await self._fetch(f"{select}{clause} ORDER BY {order} LIMIT ${len(args)}", *args)
        return Page([build(r) for r in found[:limit]], len(found) > limit)

    async def _position(self, table: str, column: str, value: Any, order: str = "tx") -> tuple[int, int]:
        """The (tx, pk) of the row a cursor names (UnknownCursor when none does)."""
        found = await self._fetch(f"SELECT {order} AS tx, pk FROM {table} WHERE {column} = $1", value)
        if not found or found[0]["tx"] is None:
            raise UnknownCursor(str(value))
        return int(found[0]["tx"]), int(found[0]["pk"])


# Rows a reader may show: written by transactions older than every one still running that could
# write them, so none that commits later can sort before them. Transactions of other databases
# cannot write our tables, so they do not hold lists back: a long one there (a report, a dump)
# would otherwise stall every list and event stream here until it ends. They are recognised by
# their 32-bit id in pg_stat_activity; one not found there (it ended meanwhile, or is not shown to
# this user) still counts, so the horizon errs only on the late side.
HORIZON = (
    "(SELECT coalesce((SELECT min(x::text::bigint) FROM pg_snapshot_xip(snap.s) AS x"
    " WHERE x::text::bigint % 4294967296 NOT IN (SELECT backend_xid::text::bigint FROM pg_stat_activity"
    " WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database())),"
    " pg_snapshot_xmax(snap.s)::text::bigint) FROM (SELECT pg_current_snapshot() AS s) AS snap)"
)
VISIBLE = "{tx} < " + HORIZON
