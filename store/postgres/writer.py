"""PostgreSQL group commit for the ack path: one writer per process turns the deliveries that
queued while the last batch was written into the next batch, written in one round trip when the
writer knows every task it names, else two."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg
import orjson

from receiver.errors import StoreError, StoreUnavailable
from receiver.rules import decide
from receiver.rules.records import DeliveryResult, NewDelivery, NewEvent, TaskChange
from store import rows
from store.batching import Deadline, settle
from store.postgres.base import guard
from store.postgres.changes import LISTED, SUBSCRIBED

__all__ = ["DeliveryWriter"]

log = logging.getLogger("receiver.store")

_MAX_BATCH = 256
WRITE_TIMEOUT = 5.0
# Group commit with a short wait under load. A batch costs about 1 ms of CPU whatever its size
# (the database's part of two statements and a commit, ours of building and decoding them) and
# about 30 us more per delivery, so batches of 15 spend twice as much per delivery on the fixed
# part as batches of 30. While deliveries arrive at BUSY_RATE a second or more, the writer waits
# up to LINGER, or until FULL are queued, before it takes a smaller batch; below that rate it never
# waits, and a lone delivery is written at once. Measured with two processes on 2 cores (scripts/
# bench ingest): their batches grew from 15 to 28 deliveries and their CPU per delivery fell by
# about a fifth. One process, whose batches held 32 already, was unchanged. A target of 32 made
# that one process wait too, and its 64 connections bunched into batches of 50: 20% slower.
FULL = 20
LINGER = 0.002
BUSY_RATE = 2000.0
# How long a batch's statement waits for a task row another session holds (our own transactions
# hold one for milliseconds). Past it the batch is stored one delivery at a time, so the others
# are answered well inside WRITE_TIMEOUT and only the held task's deliveries get a 503.
LOCK_TIMEOUT = 1.0
# The task rows and kept dedupe keys a writer last read or wrote (see _Known), at most this many.
# A row holds the task's video object (a few KB at most), so 10,000 stay within tens of MB.
KNOWN_TASKS = 10_000
KNOWN_KEYS = 100_000
# A remembered row is used for at most this long: its version is a transaction id, which comes
# round again only after billions of transactions, never within a minute.
KNOWN_SECONDS = 60.0
# Turns of the event loop between a batch's answers and the next batch: in the first the waiting
# handlers write their answers, in the second our transport sends them (it gathers one turn's
# writes into one send). Without them, once a batch skips the read round trip the next batch is
# taken and built before the last one's answers leave: one process measured 11,500 deliveries/s
# with one turn against 14,000 with two or three.
YIELDS = 2


# A batch decided on rows that changed before it was written: read and decide it again.
_CONFLICTS = (
    asyncpg.SerializationError,  # receiver_check: a task read changed, or a key was stored meanwhile
    asyncpg.UniqueViolationError,  # another process recorded this task's event or took this video id
    asyncpg.DeadlockDetectedError,
)


class DeliveryWriter:
    def __init__(self, acquire: Callable[[], Any], announce: Callable[[str], None]) -> None:
        self._acquire = acquire  # the pool's acquire(): a connection for each batch
        self._announce = announce  # news for every process, sent after the batch commits
        self._queue: asyncio.Queue[tuple[NewDelivery, asyncio.Future[DeliveryResult], float] | None] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None
        self._filled: asyncio.Future[None] | None = None  # set once FULL are queued (a linger)
        self._arrived = 0  # deliveries queued since the last batch was taken
        self._rate = 0.0  # deliveries a second, a moving average over the last batches
        self._deadline = Deadline(
            WRITE_TIMEOUT, lambda: StoreUnavailable("the store did not take the delivery in time")
        )
        self._known = _Known()

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
        loop = asyncio.get_running_loop()
        future: asyncio.Future[DeliveryResult] = loop.create_future()
        self._queue.put_nowait((delivery, future, loop.time() + WRITE_TIMEOUT))
        self._arrived += 1
        if self._filled is not None and self._queue.qsize() + 1 >= FULL:  # +1: the one it holds
            _settle(self._filled)
        self._deadline.watch(future)
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        taken = loop.time()
        while not stopping:
            item = await self._queue.get()
            if item is None:
                break
            now = loop.time()
            if now > taken:
                self._rate = 0.8 * self._rate + 0.2 * self._arrived / (now - taken)
            if self._rate >= BUSY_RATE and self._queue.qsize() + 1 < FULL:
                await self._linger(loop)
            taken, self._arrived = loop.time(), 0
            batch = [item]
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                extra = self._queue.get_nowait()
                if extra is None:
                    stopping = True
                    break
                batch.append(extra)
            # A delivery answered already (failed at its deadline: a 503; or its caller gone) is
            # not written. The rest are released from the deadline: from here on only what their
            # batch did may answer them, since it may commit.
            batch = [b for b in batch if not b[1].done()]
            if batch:
                self._deadline.release(f for _, f, _ in batch)
                deadline = min(at for _, _, at in batch)
                await self._commit([d for d, _, _ in batch], [f for _, f, _ in batch], deadline)
            for _ in range(YIELDS):
                await asyncio.sleep(0)

    async def _linger(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until FULL deliveries are queued or LINGER has passed, whichever comes first."""
        filled = self._filled = loop.create_future()
        timer = loop.call_later(LINGER, _settle, filled)
        try:
            await filled
        finally:
            timer.cancel()
            self._filled = None

    async def _commit(
        self, deliveries: list[NewDelivery], futures: list[asyncio.Future[DeliveryResult]], deadline: float
    ) -> None:
        """Write a batch and answer its callers. A failed statement wrote nothing, so a caller may
        be told "unavailable" then; no new attempt begins after `deadline` (loop time)."""
        try:
            results = await self._attempt(deliveries, deadline)
        except Exception as exc:
            if len(deliveries) == 1 or asyncio.get_running_loop().time() > deadline:
                log.warning(
                    "store: %d deliveries could not be stored (%s)", len(deliveries), type(exc).__name__
                )
                results = [StoreUnavailable("the store could not take the delivery")] * len(deliveries)
            else:
                # One bad row must not fail the other acknowledgements: each on its own.
                log.warning(
                    "store: a batch of %d deliveries failed (%s); storing them one at a time",
                    len(deliveries),
                    type(exc).__name__,
                )
                results = []
                for delivery in deliveries:
                    try:
                        results += await self._attempt([delivery], deadline)
                    except Exception as one:
                        log.warning("store: a delivery could not be stored (%s)", type(one).__name__)
                        results.append(StoreUnavailable("the store could not take the delivery"))
        settle(zip(futures, results, strict=True))

    async def _attempt(
        self, deliveries: list[NewDelivery], deadline: float
    ) -> list[DeliveryResult | StoreError]:
        loop = asyncio.get_running_loop()
        for _ in range(4):  # three reads, and a first try on what the writer knew
            if loop.time() > deadline:
                raise StoreUnavailable("the store did not take the delivery in time")
            async with guard(), self._acquire() as conn:
                try:
                    results, topic = await _store(conn, deliveries, self._known)
                except _CONFLICTS:
                    self._known.forget(deliveries)
                    continue  # decided on rows that changed: read and decide again
                except BaseException:
                    self._known.forget(deliveries)
                    raise
            if topic is not None:
                self._announce(topic)
            return results
        raise StoreUnavailable("deliveries kept conflicting with another process")


# A task as the writer reads it: rows.LEAN's columns, then token_hash and the row version.
_Task = tuple[Any, ...]
_LEAN_INDEX = {name.strip(): i for i, name in enumerate(rows.LEAN.split(","))}


class _Known:
    """The task rows and kept dedupe keys this writer last read or wrote. A batch whose every
    delivery names a task by a known token (and no video id the task does not already have) is
    decided on these without reading; its statement checks every version and key all the same,
    so a row another session changed fails the check and the batch is read and decided again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.tasks: dict[str, tuple[float, _Task]] = {}  # token hash -> (when learnt, task)
        self.keys: dict[str, None] = {}  # kept dedupe keys, oldest first
        self._clock = clock

    def lookup(self, batch: list[NewDelivery]) -> tuple[list[_Task], set[str]] | None:
        found: dict[int, _Task] = {}
        oldest = self._clock() - KNOWN_SECONDS
        for d in batch:
            known = self.tasks.get(d.token_hash) if d.token_hash is not None else None
            if known is None or known[0] < oldest:
                return None
            task = known[1]
            if d.video_id is not None and task[1] != d.video_id:
                return None
            if d.legacy_key is not None:
                return None  # a key kept before scoping is never remembered: read it
            found[task[0]] = task
        return list(found.values()), {d.key for d in batch if d.key in self.keys}

    def learn(self, tasks: list[_Task], keys: Iterable[str]) -> None:
        now = self._clock()
        for task in tasks:
            self.tasks.pop(task[7], None)
            self.tasks[task[7]] = (now, task)
        for key in keys:
            self.keys[key] = None
        _trim(self.tasks, KNOWN_TASKS)
        _trim(self.keys, KNOWN_KEYS)

    def forget(self, batch: list[NewDelivery]) -> None:
        for d in batch:
            if d.token_hash is not None:
                self.tasks.pop(d.token_hash, None)
            self.keys.pop(d.key, None)


def _trim(known: dict[str, Any], limit: int) -> None:
    while len(known) > limit:
        del known[next(iter(known))]


def _changed(task: _Task, change: TaskChange, version: str) -> _Task:
    """`task` as the batch left it: the change's columns that the writer reads, a new version."""
    values = list(task)
    for column, value in change.sets.items():
        i = _LEAN_INDEX.get(column)
        if i is not None:
            values[i] = rows.stored(column, value)
    values[8] = version
    return tuple(values)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# The SQL type of each task column a change may write (arrays are cast to these).
_TYPES = {
    "video_id": "text",
    "status": "text",
    "video": "text",
    "callback_url": "text",
    "updated_at": "float8",
    "terminal_at": "float8",
    "resolved_by": "text",
    "polls": "int",
    "anomalies": "int",
    "next_poll_at": "float8",
    "poll_failures": "int",
    "confirm_pending": "boolean",
    "expires_at": "float8",
    "last_open_poll_at": "float8",
    "completion": "float8",
}

# Round trip 1: the tasks the batch names (each with its row version, xmin) and the dedupe keys
# already kept. One row at least: the stored keys ride on every row, after the task's columns
# (rows.lean_task reads those by position).
_COLUMNS = f"{rows.LEAN}, token_hash, xmin::text AS version"
_READ = (
    "SELECT t.*, s.stored FROM (SELECT array(SELECT d.dedupe_key FROM unnest($3::text[]) AS k(v)"
    " CROSS JOIN LATERAL (SELECT dedupe_key FROM deliveries WHERE dedupe_key = k.v LIMIT 1) d)"
    " AS stored) s LEFT JOIN LATERAL"
    # One index probe per name (LIMIT keeps each a probe; the names are unique): `token_hash =
    # ANY(..) OR video_id = ANY(..)`, or a join, scans the whole table, and comparing every
    # row's text with every element was most of the server's CPU on the ack path.
    f" (SELECT f.* FROM unnest($1::text[]) AS k(v) CROSS JOIN LATERAL (SELECT {_COLUMNS} FROM tasks"
    " WHERE token_hash = k.v LIMIT 1) f UNION ALL"
    f" SELECT f.* FROM unnest($2::text[]) AS k(v) CROSS JOIN LATERAL (SELECT {_COLUMNS} FROM tasks"
    " WHERE video_id = k.v LIMIT 1) f) t ON true"
)


class _Statement:
    """One statement being built: CTEs and the arguments they bind. Every value is an argument,
    never text: a batch's statement text depends only on the shapes of its changes, so asyncpg's
    statement cache keeps it prepared (with counts in the text, nearly every batch was a new
    statement to parse, plan and prepare in an extra round trip)."""

    def __init__(self) -> None:
        self.ctes: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any, sql_type: str) -> str:
        self.args.append(value)
        return f"${len(self.args)}::{sql_type}"

    def unnest(self, columns: list[tuple[list[Any], str]], names: str) -> str:
        return f"unnest({', '.join(self.arg(v, t + '[]') for v, t in columns)}) AS x({names})"


async def _store(
    conn: asyncpg.Connection, batch: list[NewDelivery], known: _Known
) -> tuple[list[DeliveryResult | StoreError], str | None]:
    """Decide and write a batch in two round trips (one when `known` has every task it names)
    and no explicit transaction: read the tasks and kept keys, let receiver.rules.decide decide the
    whole batch in arrival order, then write every table in one statement (its own transaction,
    committed before it answers). That statement first locks the tasks it was decided on, in pk
    order, and raises a serialization failure when any of them changed since they were read (or
    remembered) or a delivery was stored meanwhile: the batch is then read and decided again, so
    it applies as if it had held the locks from the start."""
    cached = known.lookup(batch)
    if cached is None:
        found = await conn.fetch(
            _READ,
            list({d.token_hash for d in batch if d.token_hash is not None}),
            list({d.video_id for d in batch if d.video_id is not None}),
            decide.lookup_keys(batch),
        )
        # One per task; each as (LEAN..., token_hash, version), without the stored keys.
        tasks = list({r["pk"]: tuple(r)[:9] for r in found if r["pk"] is not None}.values())
        stored = set(found[0]["stored"])
        known.learn(tasks, stored)
    else:
        tasks, stored = cached
    plan = decide.plan_deliveries(batch, [(r[7], rows.lean_task(r)) for r in tasks], stored)
    # Copies of a delivery new in this batch are counted on the row the batch inserts: the
    # statement's other parts cannot see that row (they all read the snapshot it started with).
    copies = {k: v for k, v in plan.repeats.items() if k not in stored}
    repeats = {k: v for k, v in plan.repeats.items() if k in stored}
    st = _Statement()
    checks: list[str] = []
    if tasks:
        versions = sorted((r[0], r[8]) for r in tasks)
        st.ctes.append(
            # A probe per task, in pk order (the order of the array): no deadlock between writers.
            f"locked AS (SELECT l.* FROM unnest({st.arg([pk for pk, _ in versions], 'bigint[]')})"
            " AS k(v) CROSS JOIN LATERAL (SELECT pk, xmin FROM tasks WHERE pk = k.v FOR UPDATE) l)"
        )
        checks.append(
            "(SELECT count(*) FROM locked l JOIN "
            + st.unnest([([pk for pk, _ in versions], "bigint"), ([v for _, v in versions], "text")], "pk, v")
            + f" ON l.pk = x.pk AND l.xmin = x.v::xid) = {st.arg(len(versions), 'int')}"
        )
    new = plan.new
    if new:
        # In dedupe-key order: two batches inserting the same keys wait on each other in one order.
        ordered = sorted(new, key=lambda n: n[0].key)
        st.ctes.append(
            "ins AS (INSERT INTO deliveries (dedupe_key, task_pk, video_id, route, verified_by, headers,"
            " body, event_type, status, outcome, received_at, last_seen_at, repeats)"
            " SELECT k, t, v, r, vb, h, b, et, s, o, at, greatest(at, seen), n FROM "
            + st.unnest(
                [
                    ([d.key for d, *_ in ordered], "text"),
                    ([t for _, t, _, _ in ordered], "bigint"),
                    ([v for _, _, v, _ in ordered], "text"),
                    ([d.route for d, *_ in ordered], "text"),
                    ([d.verified_by for d, *_ in ordered], "text"),
                    ([orjson.dumps(d.headers).decode() for d, *_ in ordered], "text"),
                    ([d.body for d, *_ in ordered], "bytea"),
                    ([d.event_type for d, *_ in ordered], "text"),
                    ([d.status for d, *_ in ordered], "text"),
                    ([o for *_, o in ordered], "text"),
                    ([d.received_at for d, *_ in ordered], "float8"),
                    ([max(copies.get(d.key, [d.received_at])) for d, *_ in ordered], "float8"),
                    ([len(copies.get(d.key, ())) for d, *_ in ordered], "int"),
                ],
                "k, t, v, r, vb, h, b, et, s, o, at, seen, n",
            )
            + " ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key, pk)"
        )
        checks.append(f"(SELECT count(*) FROM ins) = {st.arg(len(new), 'int')}")
    updates = _task_updates(st, plan.changes, checks)
    events = [(pk, c.event) for pk, c in sorted(plan.changes.items()) if c.event is not None]
    if events:
        _events(st, events)
    if repeats:
        keys = sorted(repeats)
        st.ctes.append(
            "rep AS (UPDATE deliveries d SET repeats = d.repeats + y.n,"
            " last_seen_at = greatest(d.last_seen_at, y.at) FROM (SELECT f.pk, x.n, x.at FROM "
            + st.unnest(
                [
                    (keys, "text"),
                    ([len(repeats[k]) for k in keys], "int"),
                    ([max(repeats[k]) for k in keys], "float8"),
                ],
                "k, n, at",
            )
            + " CROSS JOIN LATERAL (SELECT pk FROM deliveries WHERE dedupe_key = x.k LIMIT 1) f) y"
            " WHERE d.pk = y.pk RETURNING d.dedupe_key, d.pk, d.outcome)"
        )
        checks.append(f"(SELECT count(*) FROM rep) = {st.arg(len(keys), 'int')}")
    if not st.ctes:
        if cached is not None:  # refused on what we knew: read to be sure
            known.forget(batch)
            return await _store(conn, batch, known)
        return decide.plan_results(plan, {}, {}, {}), None  # every delivery was refused
    answers = [f"receiver_check({' AND '.join(checks) or 'true'}) AS ok"]
    if new:
        answers.append("(SELECT json_agg(json_build_array(dedupe_key, pk)) FROM ins) AS ins")
    if repeats:
        answers.append("(SELECT json_agg(json_build_array(dedupe_key, pk, outcome)) FROM rep) AS rep")
    if events:
        answers.append(
            "(SELECT json_agg(json_build_array(e.task_pk, (SELECT count(*) FROM ob"
            " WHERE ob.event_pk = e.pk))) FROM ev e) AS sends"
        )
    if updates:
        answers.append(
            "(SELECT json_agg(json_build_array(pk, v)) FROM ("
            + " UNION ALL ".join(f"SELECT pk, v FROM {u}" for u in updates)
            + ") w) AS versions"
        )
    answer = await conn.fetchrow(f"WITH {', '.join(st.ctes)} SELECT {', '.join(answers)}", *st.args)
    inserted = {k: pk for k, pk in orjson.loads(answer["ins"])} if new else {}
    firsts = {k: (pk, outcome) for k, pk, outcome in orjson.loads(answer["rep"])} if repeats else {}
    outcomes = {d.key: outcome for d, _, _, outcome in new}
    firsts.update((k, (inserted[k], outcomes[k])) for k in copies)
    sends = {task_pk: n for task_pk, n in orjson.loads(answer["sends"])} if events else {}
    written = dict(orjson.loads(answer["versions"])) if updates else {}
    by_pk = {r[0]: r for r in tasks}
    known.learn(
        [_changed(by_pk[pk], plan.changes[pk], v) for pk, v in written.items()],
        [d.key for d, *_ in new],
    )
    # Told to every process once this batch has committed (not inside it: a NOTIFY holds a
    # cluster-wide lock through the commit's flush and would serialise every writer's commits).
    topics = ["events"] if events else []
    if any(sends.values()):
        topics.append("outbox")
    if any(o == decide.PENDING_CONFIRM for *_, o in new):
        topics.append("tasks")
    topic = ",".join(topics) or None
    return decide.plan_results(plan, inserted, firsts, sends), topic


def _task_updates(st: _Statement, changes: dict[int, TaskChange], checks: list[str]) -> list[str]:
    """One UPDATE per shape of change (a batch mostly has one or two), each row joined to the
    locked ones: every task this statement writes was locked first, in pk order."""
    shapes: dict[tuple[tuple[str, ...], tuple[str, ...]], list[tuple[int, TaskChange]]] = defaultdict(list)
    for pk in sorted(changes):
        change = changes[pk]
        if change.sets or change.adds:
            shapes[(tuple(sorted(change.sets)), tuple(sorted(change.adds)))].append((pk, change))
    for n, ((sets, adds), members) in enumerate(sorted(shapes.items())):
        columns: list[tuple[list[Any], str]] = [([pk for pk, _ in members], "bigint")]
        names = ["pk"]
        assign = []
        for i, column in enumerate(sets):
            values = [rows.stored(column, c.sets[column]) for _, c in members]
            columns.append((values, _TYPES[column]))
            names.append(f"s{i}")
            assign.append(f"{column} = x.s{i}")
        for i, column in enumerate(adds):
            columns.append(([c.adds[column] for _, c in members], _TYPES[column]))
            names.append(f"a{i}")
            assign.append(f"{column} = t.{column} + x.a{i}")
        if "video_id" in sets:
            assign.append(LISTED)
        st.ctes.append(
            f"u{n} AS (UPDATE tasks t SET {', '.join(assign)} FROM {st.unnest(columns, ', '.join(names))}"
            f" JOIN locked l ON l.pk = x.pk WHERE t.pk = x.pk RETURNING t.pk, t.xmin::text AS v)"
        )
        checks.append(f"(SELECT count(*) FROM u{n}) = {st.arg(len(members), 'int')}")
    return [f"u{n}" for n in range(len(shapes))]


def _events(st: _Statement, events: list[tuple[int, NewEvent]]) -> None:
    """Terminal results' events, their sends (the transactional outbox) and their files to keep."""
    st.ctes.append(
        "ev AS (INSERT INTO events (id, task_pk, video_id, type, created_at, data) SELECT * FROM "
        + st.unnest(
            [
                ([e.id for _, e in events], "text"),
                ([pk for pk, _ in events], "bigint"),
                ([e.video_id for _, e in events], "text"),
                ([e.type for _, e in events], "text"),
                ([e.created_at for _, e in events], "float8"),
                ([json.dumps(e.data) for _, e in events], "text"),
            ],
            "id, task_pk, video_id, type, created_at, data",
        )
        + " RETURNING pk, task_pk, type, created_at)"
    )
    st.ctes.append(
        "ob AS (INSERT INTO outbox (event_pk, subscription_pk, status, next_attempt_at, created_at,"
        " held) SELECT e.pk, s.pk, 'pending', e.created_at, e.created_at, s.status = 'paused' FROM ev e"
        f" JOIN subscriptions s ON {SUBSCRIBED} RETURNING event_pk)"
    )
    files = [(pk, e.video_id, v, url, e.created_at) for pk, e in events for v, url in e.files]
    if files:
        st.ctes.append(
            "cap AS (INSERT INTO captures (task_pk, video_id, variant, url, status, next_attempt_at,"
            " created_at) SELECT x.t, x.v, x.n, x.u, 'pending', x.at, x.at FROM "
            + st.unnest(
                [
                    ([f[0] for f in files], "bigint"),
                    ([f[1] for f in files], "text"),
                    ([f[2] for f in files], "text"),
                    ([f[3] for f in files], "text"),
                    ([f[4] for f in files], "float8"),
                ],
                "t, v, n, u, at",
            )
            + " ON CONFLICT (task_pk, variant) DO NOTHING)"
        )
