"""PostgreSQL group commit for the ack path: one writer per process turns the deliveries that
queued while the last commit ran into one transaction of set-based statements."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson

from receiver import core
from store import rows
from store.errors import StoreError, StoreUnavailable
from store.postgres.base import CHANNEL, guard
from store.postgres.changes import write_changes
from store.records import DeliveryResult, NewDelivery

__all__ = ["DeliveryWriter"]

log = logging.getLogger("receiver.store")

_MAX_BATCH = 256
WRITE_TIMEOUT = 5.0


class _Conflict(Exception):
    """Another process stored one of this batch's deliveries first: decide the batch again."""


class DeliveryWriter:
    def __init__(self, acquire: Callable[[], Any]) -> None:
        self._acquire = acquire  # the pool's acquire(): a connection for each batch
        self._queue: asyncio.Queue[tuple[NewDelivery, asyncio.Future[DeliveryResult]] | None] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="store-delivery-writer")

    async def stop(self) -> None:
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None

    async def record(self, delivery: NewDelivery) -> DeliveryResult:
        if self._task is None or self._task.done():
            raise StoreUnavailable("the store is not open")
        future: asyncio.Future[DeliveryResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((delivery, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), WRITE_TIMEOUT)
        except TimeoutError:
            raise StoreUnavailable("the store did not take the delivery in time") from None

    async def _loop(self) -> None:
        stopping = False
        while not stopping:
            item = await self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                extra = self._queue.get_nowait()
                if extra is None:
                    stopping = True
                    break
                batch.append(extra)
            await self._commit([d for d, _ in batch], [f for _, f in batch])

    async def _commit(
        self, deliveries: list[NewDelivery], futures: list[asyncio.Future[DeliveryResult]]
    ) -> None:
        try:
            results = await self._attempt(deliveries)
        except Exception as exc:
            if len(deliveries) == 1:
                log.warning("store: a delivery could not be stored (%s)", type(exc).__name__)
                results = [StoreUnavailable("the store could not take the delivery")]
            else:
                # One bad row must not fail the other acknowledgements: each on its own.
                results = []
                for delivery in deliveries:
                    try:
                        results += await self._attempt([delivery])
                    except Exception as one:
                        log.warning("store: a delivery could not be stored (%s)", type(one).__name__)
                        results.append(StoreUnavailable("the store could not take the delivery"))
        for future, result in zip(futures, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _attempt(self, deliveries: list[NewDelivery]) -> list[DeliveryResult | StoreError]:
        for _ in range(3):
            try:
                async with guard(), self._acquire() as conn, conn.transaction():
                    return await _store(conn, deliveries)
            except _Conflict:
                continue
        raise StoreUnavailable("deliveries kept conflicting with another process")


async def _store(conn: asyncpg.Connection, batch: list[NewDelivery]) -> list[DeliveryResult | StoreError]:
    """Decide and write a batch in one transaction: the tasks locked in pk order, every decision
    made by receiver.core in arrival order, then one statement per table."""
    tokens = list({d.token_hash for d in batch if d.token_hash is not None})
    videos = list({d.video_id for d in batch if d.video_id is not None})
    found = await conn.fetch(
        f"SELECT {rows.LEAN}, token_hash FROM tasks WHERE token_hash = ANY($1::text[])"
        " OR video_id = ANY($2::text[]) ORDER BY pk FOR UPDATE",
        tokens,
        videos,
    )
    # Under the task locks, a delivery stored by another process is visible now: a copy of one
    # delivery arriving at two processes at once is applied once.
    stored = {
        r["dedupe_key"]
        for r in await conn.fetch(
            "SELECT dedupe_key FROM deliveries WHERE dedupe_key = ANY($1::text[])",
            list({d.dedupe_key for d in batch}),
        )
    }
    plan = core.plan_deliveries(batch, [(r["token_hash"], rows.lean_task(r)) for r in found], stored)
    new = plan.new
    inserted: dict[str, int] = {}
    if new:
        for row in await conn.fetch(
            "INSERT INTO deliveries (dedupe_key, task_pk, video_id, route, verified_by, headers, body,"
            " event_type, status, outcome, received_at, last_seen_at)"
            " SELECT k, t, v, r, vb, h, b, et, s, o, at, at FROM unnest($1::text[], $2::bigint[],"
            " $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[], $8::text[], $9::text[],"
            " $10::text[], $11::float8[]) AS x(k, t, v, r, vb, h, b, et, s, o, at)"
            " ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key, pk",
            [d.dedupe_key for d, *_ in new],
            [t for _, t, _, _ in new],
            [v for _, _, v, _ in new],
            [d.route for d, *_ in new],
            [d.verified_by for d, *_ in new],
            [orjson.dumps(d.headers).decode() for d, *_ in new],
            [d.body for d, *_ in new],
            [d.event_type for d, *_ in new],
            [d.status for d, *_ in new],
            [o for *_, o in new],
            [d.received_at for d, *_ in new],
        ):
            inserted[row["dedupe_key"]] = row["pk"]
        if len(inserted) < len(new):
            # Stored meanwhile by a process that did not need these tasks' locks (no task yet).
            # Our decisions assumed these were new: decide the whole batch again.
            raise _Conflict()
    sends = await write_changes(conn, plan.changes) if plan.changes else {}
    firsts: dict[str, tuple[int, str]] = {}
    if plan.repeats:
        for row in await conn.fetch(
            "UPDATE deliveries d SET repeats = d.repeats + x.n, last_seen_at = greatest(d.last_seen_at, x.at)"
            " FROM unnest($1::text[], $2::int[], $3::float8[]) AS x(k, n, at) WHERE d.dedupe_key = x.k"
            " RETURNING d.dedupe_key, d.pk, d.outcome",
            list(plan.repeats),
            [len(v) for v in plan.repeats.values()],
            [max(v) for v in plan.repeats.values()],
        ):
            firsts[row["dedupe_key"]] = (row["pk"], row["outcome"])
    if sends:
        await conn.execute("SELECT pg_notify($1, 'events,outbox')", CHANNEL)
    elif any(o == core.PENDING_CONFIRM for *_, o in new):
        await conn.execute("SELECT pg_notify($1, 'tasks')", CHANNEL)
    return core.plan_results(plan, inserted, firsts, sends)
