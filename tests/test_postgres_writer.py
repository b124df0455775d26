"""PostgreSQL's ack path reads, decides, then writes in one statement without holding locks in
between: a batch decided on rows that changed meanwhile must be decided again, never applied."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from receiver.errors import StoreUnavailable, UnknownToken
from store.postgres import PostgresStore
from store.postgres import writer as writer_module
from tests.helpers import delivery, new_task, opened, submitted

pytestmark = pytest.mark.anyio


class _Interleaved:
    """A connection that runs `between` once, right after the batch's read: another process's
    write lands between our read and our write."""

    def __init__(self, conn: Any, between: Callable[[], Awaitable[None]], fired: list[bool]) -> None:
        self._conn, self._between, self._fired = conn, between, fired

    async def fetch(self, sql: str, *args: Any) -> Any:
        found = await self._conn.fetch(sql, *args)
        if not self._fired:
            self._fired.append(True)
            await self._between()
        return found

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._conn.fetchrow(sql, *args)


def interleave(store: PostgresStore, between: Callable[[], Awaitable[None]]) -> list[bool]:
    writer = store._deliveries
    assert writer is not None
    acquire, fired = writer._acquire, []

    @contextlib.asynccontextmanager
    async def interleaved() -> AsyncIterator[_Interleaved]:
        async with acquire() as conn:
            yield _Interleaved(conn, between, fired)

    writer._acquire = interleaved
    return fired


async def test_a_task_changed_between_read_and_write_is_decided_again(postgres_url: str) -> None:
    now = time.time()
    async with opened(postgres_url, 2) as (a, b):
        assert isinstance(a, PostgresStore)
        pk = await submitted(a, 1, now)

        async def poll_finishes_it() -> None:
            await b.record_poll(pk, "completed", {"id": "vid1", "status": "completed"}, now + 1, None)

        fired = interleave(a, poll_finishes_it)
        result = await a.record_delivery(delivery(1, "msg:late", "in_progress", now + 2))
        assert fired  # the poll did land between the read and the write
        task = await a.task_by_video("vid1")
        assert task is not None
        # Decided on the task as the read saw it (queued), this delivery would have moved it back
        # to in_progress; decided again, it finds the result already recorded.
        assert (task.status, task.resolved_by) == ("completed", "poll")
        assert result.outcome != "applied" and not result.terminal
        events = await a.list_events("vid1", None, 10, None)
        assert [e.data["status"] for e in events.rows] == ["completed"]


async def test_a_task_abandoned_between_read_and_write_is_not_named(postgres_url: str) -> None:
    """No foreign key keeps a delivery's task (migration 4): the batch's lock and check must. A
    failed submit abandoned by another process after our read leaves the delivery refused as
    an unknown token, not stored naming a task that is gone."""
    now = time.time()
    async with opened(postgres_url, 2) as (a, b):
        assert isinstance(a, PostgresStore)
        created = await b.create_task(new_task(1, now))
        assert created.pk is not None
        abandoned: list[bool] = []

        async def other_process_abandons() -> None:
            abandoned.append(await b.abandon_submit(created.pk))

        fired = interleave(a, other_process_abandons)
        with pytest.raises(UnknownToken):
            await a.record_delivery(delivery(1, "msg:first", "in_progress", now))
        assert fired and abandoned == [True]
        assert await a.task_by_pk(created.pk) is None
        assert (await a.list_deliveries(None, 10, None)).rows == []


def round_trips(store: PostgresStore) -> list[str]:
    """The writer's statements from now on: "read" or "write", in order."""
    writer = store._deliveries
    assert writer is not None
    acquire, seen = writer._acquire, []

    class Counting:
        def __init__(self, conn: Any) -> None:
            self._conn = conn

        async def fetch(self, sql: str, *args: Any) -> Any:
            seen.append("read")
            return await self._conn.fetch(sql, *args)

        async def fetchrow(self, sql: str, *args: Any) -> Any:
            seen.append("write")
            return await self._conn.fetchrow(sql, *args)

    @contextlib.asynccontextmanager
    async def counted() -> AsyncIterator[Counting]:
        async with acquire() as conn:
            yield Counting(conn)

    writer._acquire = counted
    return seen


async def test_a_batch_naming_only_tasks_the_writer_knows_skips_the_read(postgres_url: str) -> None:
    now = time.time()
    async with opened(postgres_url) as (store,):
        assert isinstance(store, PostgresStore)
        await submitted(store, 1, now)
        seen = round_trips(store)
        first = await store.record_delivery(delivery(1, "msg:1", "in_progress", now))
        second = await store.record_delivery(delivery(1, "msg:2", "completed", now + 1))
        assert seen == ["read", "write", "write"]  # the second was decided on what the first left
        assert (first.outcome, second.outcome, second.terminal) == ("applied", "applied", True)
        task = await store.task_by_video("vid1")
        assert task is not None and (task.status, task.deliveries) == ("completed", 2)
        again = await store.record_delivery(delivery(1, "msg:2", "completed", now + 2))
        assert again.duplicate and again.id == second.id and seen[-1] == "write"


async def test_a_known_task_another_process_changed_is_read_and_decided_again(postgres_url: str) -> None:
    now = time.time()
    async with opened(postgres_url, 2) as (a, b):
        assert isinstance(a, PostgresStore)
        pk = await submitted(a, 1, now)
        await a.record_delivery(delivery(1, "msg:1", "in_progress", now))  # a now knows the task
        await b.record_poll(pk, "completed", {"id": "vid1", "status": "completed"}, now + 1, None)
        seen = round_trips(a)
        late = await a.record_delivery(delivery(1, "msg:2", "in_progress", now + 2))
        # Decided on what a knew (in_progress), it would be applied; its check failed, and read
        # again it finds the result recorded.
        assert seen == ["write", "read", "write"]
        task = await a.task_by_video("vid1")
        assert task is not None and (task.status, task.resolved_by) == ("completed", "poll")
        assert late.outcome != "applied" and not late.terminal
        events = await a.list_events("vid1", None, 10, None)
        assert [e.data["status"] for e in events.rows] == ["completed"]


async def test_a_copy_the_other_process_kept_is_a_repeat_though_its_task_is_known(postgres_url: str) -> None:
    now = time.time()
    async with opened(postgres_url, 2) as (a, b):
        await submitted(a, 1, now)
        await a.record_delivery(delivery(1, "msg:1", "in_progress", now))  # a now knows the task
        first = await b.record_delivery(delivery(1, "msg:2", "completed", now + 1))
        copy = await a.record_delivery(delivery(1, "msg:2", "completed", now + 1))
        assert copy.duplicate and copy.id == first.id and not copy.terminal
        page = await a.list_deliveries(None, 10, None)
        assert sorted((d.dedupe_key, d.repeats) for d in page.rows) == [("msg:1", 0), ("msg:2", 1)]


async def test_a_copy_stored_between_read_and_write_is_a_repeat(postgres_url: str) -> None:
    now = time.time()
    async with opened(postgres_url, 2) as (a, b):
        assert isinstance(a, PostgresStore)
        # A delivery for a video no task has yet: no task row to lock, only the key to collide on.
        early = delivery(1, "msg:same", "completed", now, route="workspace", token_hash=None)

        async def the_other_process_stores_it() -> None:
            first = await b.record_delivery(early)
            assert (first.outcome, first.duplicate) == ("unmatched", False)

        interleave(a, the_other_process_stores_it)
        copy = await a.record_delivery(early)
        assert copy.duplicate and copy.outcome == "unmatched"
        page = await a.list_deliveries(None, 10, None)
        assert [(d.id, d.repeats) for d in page.rows] == [(copy.id, 1)]


async def test_copies_in_one_batch_are_counted_in_that_batch(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    async with opened(postgres_url) as (store,):
        for n in range(3):
            await submitted(store, n, now)
        # Queued together, so they share a batch: the first copy is inserted by the very
        # statement that must count the others.
        results = await asyncio.gather(
            *(
                store.record_delivery(delivery(n, f"msg:{n}", "completed", now + i))
                for n in range(3)
                for i in range(3)
            )
        )
        assert [r.duplicate for r in results] == [False, True, True] * 3
        assert len({r.id for r in results}) == 3 and all(r.outcome == "applied" for r in results)
        for n in range(3):
            task = await store.task_by_video(f"vid{n}")
            assert task is not None and (task.deliveries, task.duplicates, task.status) == (3, 2, "completed")
        page = await store.list_deliveries(None, 10, None)
        assert sorted(d.last_seen_at - now for d in page.rows) == [2, 2, 2]
        assert "one at a time" not in caplog.text  # not rescued by the fallback


async def test_a_task_row_held_elsewhere_fails_only_its_own_deliveries(postgres_url: str) -> None:
    now = time.time()
    async with opened(postgres_url) as (store,):
        for n in (1, 2):
            await submitted(store, n, now)
        holder = await asyncpg.connect(postgres_url)  # a long transaction, or a stopped process
        try:
            held = holder.transaction()
            await held.start()
            await holder.execute("SELECT pk FROM tasks WHERE video_id = 'vid1' FOR UPDATE")
            blocked = asyncio.create_task(store.record_delivery(delivery(1, "msg:held", "in_progress", now)))
            await _until_a_statement_waits_on_a_lock(holder)
            # Queued behind the blocked batch: answered once that batch gives up on the lock,
            # not left waiting for the lock (then for the store's 5 s deadline, and a 503).
            free = await store.record_delivery(delivery(2, "msg:free", "in_progress", now))
            assert (free.outcome, free.duplicate) == ("applied", False)
            with pytest.raises(StoreUnavailable):
                await blocked
            await held.rollback()
        finally:
            await holder.close()
        # Nothing of the failed one was kept: the provider's retry is a first delivery.
        again = await store.record_delivery(delivery(1, "msg:held", "in_progress", now + 1))
        assert (again.outcome, again.duplicate) == ("applied", False)


async def _until_a_statement_waits_on_a_lock(conn: asyncpg.Connection) -> None:
    deadline = time.monotonic() + 10
    while not await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ):
        assert time.monotonic() < deadline, "the writer never reached the held row"
        await asyncio.sleep(0.02)  # wait-ok: the poll interval of a condition wait with a deadline


async def _batches_of(url: str, keys: list[str]) -> list[int]:
    """How many of `keys` each writing transaction stored (a batch is one statement)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            # Kept keys are scoped ("t:<task> msg:1"): compared here by the provider's part.
            "SELECT count(*) AS n FROM deliveries"
            " WHERE substr(dedupe_key, strpos(dedupe_key, ' ') + 1) = ANY($1::text[])"
            " GROUP BY tx ORDER BY min(pk)",
            keys,
        )
    finally:
        await conn.close()
    return [r["n"] for r in rows]


async def test_under_load_a_short_batch_waits_for_a_full_one(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "BUSY_RATE", 0.0)  # as if deliveries were pouring in
    monkeypatch.setattr(writer_module, "LINGER", 30.0)  # only FULL queued can end the wait in time
    now = time.time()
    async with opened(postgres_url) as (store,):
        assert isinstance(store, PostgresStore) and store._deliveries is not None
        writer = store._deliveries
        await submitted(store, 1, now)
        first = asyncio.create_task(store.record_delivery(delivery(1, "msg:0", "in_progress", now)))
        deadline = time.monotonic() + 10
        while writer._filled is None:  # the writer holds the lone delivery back
            assert time.monotonic() < deadline and not first.done(), "the writer did not wait"
            await asyncio.sleep(0.01)  # wait-ok: the poll interval of a condition wait with a deadline
        keys = [f"msg:{i}" for i in range(writer_module.FULL)]
        rest = [store.record_delivery(delivery(1, k, "in_progress", now + 1)) for k in keys[1:]]
        results = await asyncio.wait_for(asyncio.gather(first, *rest), 10)
        assert not any(r.duplicate for r in results) and len({r.id for r in results}) == writer_module.FULL
        assert await _batches_of(postgres_url, keys) == [writer_module.FULL]


async def test_a_lone_delivery_is_written_at_once(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "LINGER", 30.0)  # a wait would outlast the test's patience
    now = time.time()
    async with opened(postgres_url) as (store,):
        await submitted(store, 1, now)
        for i in range(3):  # one at a time, as a quiet provider sends them
            result = await asyncio.wait_for(
                store.record_delivery(delivery(1, f"msg:{i}", "in_progress", now + i)), 10
            )
            assert not result.duplicate
        assert await _batches_of(postgres_url, [f"msg:{i}" for i in range(3)]) == [1, 1, 1]


async def test_a_remembered_task_is_read_again_after_a_minute() -> None:
    """A row version is a transaction id, which comes round again after billions of them: the
    writer never decides on a row it learnt more than KNOWN_SECONDS ago."""
    now = [1000.0]
    known = writer_module._Known(clock=lambda: now[0])
    task = (7, "vid1", "queued", "{}", 0.0, None, None, "tok1", "123")
    d = delivery(1, "msg:1", "in_progress", 0.0)
    known.learn([task], [d.key])
    assert known.lookup([d]) == ([task], {d.key})
    now[0] += writer_module.KNOWN_SECONDS + 1
    assert known.lookup([d]) is None
