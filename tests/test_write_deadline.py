"""A 503 means nothing was written: a write that began is waited for, one that had not begun by
its caller's deadline is never made. Both writers, driven past their deadlines."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from receiver.errors import StoreUnavailable
from store.postgres import tasks as pg_tasks
from store.postgres import writer as pg_writer
from store.sqlite import SQLiteStore
from store.sqlite import deliveries as sqlite_deliveries
from store.sqlite import writer as sqlite_writer
from store.sqlite.writer import Writer
from tests.conftest import wait_until
from tests.helpers import delivery, opened, submitted

pytestmark = pytest.mark.anyio

DEADLINE = 0.3  # seconds a caller waits for its write here (5 in service)


class Blocker:
    """A unit of work that writes a row, then holds the writer thread until released: a write
    that outlives its caller's deadline (a replay of a million sends, say)."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t (x) VALUES (?)", (self.value,))
        self.started.set()
        self.release.wait(30)  # the test lets it go; 30 s bounds a test that failed first
        return "done"


def _count(path: Path, value: int) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM t WHERE x = ?", (value,)).fetchone()[0])


async def _past(seconds: float) -> None:
    """Until `seconds` have passed on the loop's clock: a deadline must have gone by."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    await wait_until(lambda: loop.time() > end, timeout=seconds + 10, what="the deadline to pass")


@pytest.fixture
async def writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(sqlite_writer, "WRITE_TIMEOUT", DEADLINE)
    one = Writer(str(tmp_path / "w.db"), lambda conn: conn.execute("CREATE TABLE IF NOT EXISTS t (x)"))
    await one.start()
    yield one
    await one.stop()


async def test_a_unit_that_outlives_its_deadline_is_waited_for(writer: Writer, tmp_path: Path) -> None:
    slow = Blocker(1)
    call = asyncio.create_task(writer.run(slow))
    try:
        await wait_until(slow.started.is_set, what="the unit to begin")
        await _past(DEADLINE * 2)
        # Its batch may still commit: answering "unavailable" now would be a lie.
        assert not call.done(), call
    finally:
        slow.release.set()
    assert await call == "done"
    assert _count(tmp_path / "w.db", 1) == 1


async def test_a_unit_not_begun_by_its_deadline_is_never_run(writer: Writer, tmp_path: Path) -> None:
    slow = Blocker(1)
    first = asyncio.create_task(writer.run(slow))
    try:
        await wait_until(slow.started.is_set, what="the unit to begin")
        with pytest.raises(StoreUnavailable):
            await writer.run(lambda conn: conn.execute("INSERT INTO t (x) VALUES (2)"))
    finally:
        slow.release.set()
    assert await first == "done"
    await writer.run(lambda conn: conn.execute("INSERT INTO t (x) VALUES (3)"))  # after any batch of it
    assert (_count(tmp_path / "w.db", 2), _count(tmp_path / "w.db", 3)) == (0, 1)


async def test_a_delivery_answered_503_on_sqlite_was_not_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writer, "WRITE_TIMEOUT", DEADLINE)
    monkeypatch.setattr(sqlite_deliveries, "WRITE_TIMEOUT", DEADLINE)
    store = SQLiteStore(str(tmp_path / "receiver.db"))
    await store.open()
    try:
        now = time.time()
        await submitted(store, 1, now)
        await store._write(lambda conn: conn.execute("CREATE TABLE t (x)"))
        slow = Blocker(1)
        busy = asyncio.create_task(store._write(slow))  # the one writer, held by a long write
        try:
            await wait_until(slow.started.is_set, what="the long write to begin")
            with pytest.raises(StoreUnavailable):
                await store.record_delivery(delivery(1, "msg:late", "completed", now))
        finally:
            slow.release.set()
        assert await busy == "done"
        # Nothing of it was kept: the provider's retry, as told, is the first delivery.
        again = await store.record_delivery(delivery(1, "msg:late", "completed", now + 1))
        assert (again.duplicate, again.outcome, again.terminal) == (False, "applied", True)
    finally:
        await store.close()


async def test_a_delivery_answered_503_on_postgres_was_not_stored(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One batch waits on a task row another session holds, past its callers' deadline; a second
    delivery queues behind it. The first is answered by what its batch did (it began and then
    committed); the second, not begun by its deadline, gets 503 and is never written."""
    monkeypatch.setattr(pg_writer, "WRITE_TIMEOUT", DEADLINE)
    monkeypatch.setattr(pg_tasks, "LOCK_TIMEOUT", 30.0)  # the batch waits for the row, not gives up
    now = time.time()
    async with opened(postgres_url) as (store,):
        for n in (1, 2):
            await submitted(store, n, now)
        holder = await asyncpg.connect(postgres_url)
        try:
            held = holder.transaction()
            await held.start()
            await holder.execute("SELECT pk FROM tasks WHERE video_id = 'vid1' FOR UPDATE")
            begun = asyncio.create_task(store.record_delivery(delivery(1, "msg:begun", "completed", now)))
            await wait_until(lambda: _waits_on_a_lock(holder), what="the batch to wait on the row")
            queued = asyncio.create_task(store.record_delivery(delivery(2, "msg:queued", "completed", now)))
            with pytest.raises(StoreUnavailable):
                await queued
            await _past(DEADLINE)
            assert not begun.done(), begun  # its statement may yet commit
            await held.rollback()
            result = await begun
            assert (result.duplicate, result.outcome, result.terminal) == (False, "applied", True)
            kept = await holder.fetch("SELECT dedupe_key FROM deliveries")
            assert [r["dedupe_key"].endswith(" msg:begun") for r in kept] == [True]
        finally:
            await holder.close()
        again = await store.record_delivery(delivery(2, "msg:queued", "completed", now + 1))
        assert (again.duplicate, again.outcome, again.terminal) == (False, "applied", True)


async def _waits_on_a_lock(conn: asyncpg.Connection) -> bool:
    waiting = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return bool(waiting)
