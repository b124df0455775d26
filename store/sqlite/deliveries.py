"""SQLite group commit for the ack path: the deliveries that queue while the writer is busy are
decided together by receiver.rules.decide and written with a handful of set-based statements.

Every statement hands the GIL to the event loop while SQLite works, and waits to get it back:
one statement per delivery row made the writer thread and the loop take turns thousands of times
a second. Here a batch costs about seven statements whatever its size (reads come back as one
JSON row; inserts are one multi-row VALUES)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
from collections import defaultdict
from typing import Any

import orjson

from receiver.errors import StoreError, StoreUnavailable
from receiver.rules import decide
from receiver.rules.records import DeliveryResult, NewDelivery, TaskChange
from store import rows
from store.batching import Deadline, settle
from store.sql import subscribed
from store.sqlite.writer import WRITE_TIMEOUT, Late, Writer

__all__ = ["LISTED", "SUBSCRIBED", "DeliveryBatcher", "record_events", "stored"]

log = logging.getLogger("receiver.store")

_MAX_BATCH = 256  # 12 parameters a row: far under SQLite's 32,766


def _json_rows(conn: sqlite3.Connection, sql: str, *params: Any) -> list[list[Any]]:
    """A query whose one row is a json_group_array: its rows, read in one step."""
    row = conn.execute(sql, params).fetchone()
    return list(orjson.loads(row[0])) if row and row[0] else []


# A task joins the list when it gets its video id, after every task listed before: one writer at
# a time (BEGIN IMMEDIATE), so the largest place so far is final when this transaction reads it.
# (The WHERE matches the tasks_listed index: the largest place is one index read, not a scan.)
LISTED = "listed_seq = (SELECT coalesce(max(listed_seq), 0) + 1 FROM tasks WHERE video_id IS NOT NULL)"
# Which subscriptions `s` an event `e` is sent to (store.sql), for every statement that queues sends.
SUBSCRIBED = subscribed("EXISTS (SELECT 1 FROM json_each(s.events) WHERE value = e.type)")


def stored(column: str, value: Any) -> Any:
    """A change's value as SQLite keeps it (store.rows.stored; a flag as 0 or 1)."""
    return int(value) if isinstance(value, bool) else rows.stored(column, value)


def _task_updates(conn: sqlite3.Connection, changes: dict[int, TaskChange]) -> None:
    """One UPDATE ... FROM json_each per shape of change."""
    shapes: dict[tuple[tuple[str, ...], tuple[str, ...]], list[list[Any]]] = defaultdict(list)
    for pk in sorted(changes):
        change = changes[pk]
        if not (change.sets or change.adds):
            continue
        values = [stored(c, v) for c, v in change.sets.items()]
        shapes[(tuple(change.sets), tuple(change.adds))].append([pk, *values, *change.adds.values()])
    for (sets, adds), items in shapes.items():
        columns = [*sets, *adds]
        assignments = [f"{c} = x.c{i}" for i, c in enumerate(sets)]
        assignments += [f"{c} = {c} + x.c{len(sets) + i}" for i, c in enumerate(adds)]
        if "video_id" in sets:
            assignments.append(LISTED)
        extract = ", ".join(f"json_extract(value, '$[{i + 1}]') AS c{i}" for i in range(len(columns)))
        conn.execute(
            f"UPDATE tasks SET {', '.join(assignments)} FROM (SELECT json_extract(value, '$[0]') AS pk,"
            f" {extract} FROM json_each(?)) AS x WHERE tasks.pk = x.pk",
            (orjson.dumps(items).decode(),),
        )


def record_events(conn: sqlite3.Connection, changes: dict[int, TaskChange]) -> dict[int, int]:
    """The batch's events, their sends (the transactional outbox) and their result files to keep.
    Sends queued per task."""
    events = [(pk, c.event) for pk, c in changes.items() if c.event is not None]
    if not events:
        return {}
    conn.execute(
        "INSERT INTO events (id, task_pk, video_id, type, created_at, data) VALUES "
        + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(events)),
        [v for pk, e in events for v in (e.id, pk, e.video_id, e.type, e.created_at, json.dumps(e.data))],
    )
    ids = orjson.dumps([e.id for _, e in events]).decode()
    conn.execute(
        "INSERT INTO outbox (event_pk, subscription_pk, status, next_attempt_at, created_at, held)"
        " SELECT e.pk, s.pk, 'pending', e.created_at, e.created_at, s.status = 'paused'"
        " FROM events e JOIN subscriptions s"
        f" ON {SUBSCRIBED}"
        " WHERE e.id IN (SELECT value FROM json_each(?))",
        (ids,),
    )
    # A completed result's files to keep: durable work written with the result (receiver.workers.capture).
    files = [[pk, e.video_id, v, url, e.created_at] for pk, e in events for v, url in e.files]
    if files:
        conn.execute(
            "INSERT INTO captures (task_pk, video_id, variant, url, status, next_attempt_at, created_at)"
            " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),"
            " json_extract(value, '$[3]'), 'pending', json_extract(value, '$[4]'),"
            " json_extract(value, '$[4]') FROM json_each(?) WHERE true"
            " ON CONFLICT (task_pk, variant) DO NOTHING",
            (orjson.dumps(files).decode(),),
        )
    counts = _json_rows(
        conn,
        "SELECT json_group_array(json_array(e.task_pk, (SELECT count(*) FROM outbox o"
        " WHERE o.event_pk = e.pk))) FROM events e WHERE e.id IN (SELECT value FROM json_each(?))",
        ids,
    )
    return {int(pk): int(n) for pk, n in counts}


def store_batch(conn: sqlite3.Connection, batch: list[NewDelivery]) -> list[DeliveryResult | StoreError]:
    """Decide and write a batch inside the writer's transaction (which holds the write lock, so
    what these reads see stays true until the commit)."""
    tokens = orjson.dumps(list({d.token_hash for d in batch if d.token_hash is not None})).decode()
    videos = orjson.dumps(list({d.video_id for d in batch if d.video_id is not None})).decode()
    keys = orjson.dumps(decide.lookup_keys(batch)).decode()
    found = _json_rows(
        conn,
        "SELECT json_group_array(json_array(pk, video_id, status, video, created_at, next_poll_at,"
        " last_open_poll_at, token_hash)) FROM tasks WHERE token_hash IN (SELECT value FROM json_each(?))"
        " OR video_id IN (SELECT value FROM json_each(?))",
        tokens,
        videos,
    )
    stored = _json_rows(
        conn,
        "SELECT json_group_array(dedupe_key) FROM deliveries WHERE dedupe_key IN"
        " (SELECT value FROM json_each(?))",
        keys,
    )
    plan = decide.plan_deliveries(batch, [(r[7], rows.lean_task(r)) for r in found], {str(k) for k in stored})
    if plan.new:
        conn.execute(
            "INSERT INTO deliveries (dedupe_key, task_pk, video_id, route, verified_by, headers, body,"
            " event_type, status, outcome, received_at, last_seen_at) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(plan.new)),
            [
                v
                for d, task_pk, video_id, outcome in plan.new
                for v in (
                    d.key,
                    task_pk,
                    video_id,
                    d.route,
                    d.verified_by,
                    orjson.dumps(d.headers).decode(),
                    d.body,
                    d.event_type,
                    d.status,
                    outcome,
                    d.received_at,
                    d.received_at,
                )
            ],
        )
    if plan.changes:
        _task_updates(conn, plan.changes)
    sends = record_events(conn, plan.changes)
    if plan.repeats:
        conn.execute(
            "UPDATE deliveries SET repeats = repeats + x.n, last_seen_at = max(last_seen_at, x.at)"
            " FROM (SELECT json_extract(value, '$[0]') AS k, json_extract(value, '$[1]') AS n,"
            " json_extract(value, '$[2]') AS at FROM json_each(?)) AS x WHERE deliveries.dedupe_key = x.k",
            (orjson.dumps([[k, len(v), max(v)] for k, v in plan.repeats.items()]).decode(),),
        )
    written = _json_rows(
        conn,
        "SELECT json_group_array(json_array(dedupe_key, pk, outcome)) FROM deliveries"
        " WHERE dedupe_key IN (SELECT value FROM json_each(?))",
        keys,
    )
    ids = {k: (pk, outcome) for k, pk, outcome in written}
    return decide.plan_results(plan, {k: pk for k, (pk, _) in ids.items()}, ids, sends)


class DeliveryBatcher:
    """Collects the deliveries that arrive while the writer is busy into one unit of work.

    A delivery still waiting here at its deadline fails (503, nothing written); once its batch
    is handed to the writer, the writer's own rule holds from the same deadline on: not begun
    by then, it never runs; begun, it is waited for."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._pending: list[tuple[NewDelivery, asyncio.Future[DeliveryResult], float]] = []
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None
        self._deadline = Deadline(
            WRITE_TIMEOUT, lambda: StoreUnavailable("the store did not take the delivery in time")
        )

    async def record(self, delivery: NewDelivery) -> DeliveryResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[DeliveryResult] = loop.create_future()
        self._pending.append((delivery, future, loop.time() + WRITE_TIMEOUT))
        if not self._flushing:
            self._flushing = True
            self._flusher = loop.create_task(self._flush())
        self._deadline.watch(future)
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                taken, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
                # Answered already (failed at the deadline, or its caller cancelled): not written.
                batch = [(d, f, at) for d, f, at in taken if not f.done()]
                if not batch:
                    continue
                futures = [f for _, f, _ in batch]
                self._deadline.release(futures)
                deadline = min(at for _, _, at in batch)
                deliveries = [d for d, _, _ in batch]
                results: list[Any]
                try:
                    results = await self._writer.run(
                        functools.partial(store_batch, batch=deliveries), deadline=deadline
                    )
                except Late:
                    results = [StoreUnavailable("the store did not take the delivery in time")] * len(batch)
                except StoreUnavailable:
                    if len(batch) == 1:
                        results = [StoreUnavailable("the store could not take the delivery")]
                    else:
                        # One bad row must not fail the other acknowledgements: each on its own.
                        singles = [functools.partial(store_batch, batch=[d]) for d in deliveries]
                        answers = await asyncio.gather(
                            *(self._writer.run(one, deadline=deadline) for one in singles),
                            return_exceptions=True,
                        )
                        results = [a[0] if isinstance(a, list) else a for a in answers]
                settle(zip(futures, results, strict=True))
        finally:
            self._flushing = False
