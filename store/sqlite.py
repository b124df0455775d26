"""SQLite store: WAL, one writer thread that groups concurrent commits, aiosqlite for reads."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson

from store import (
    Attempt,
    AttemptRow,
    CreateResult,
    Decide,
    DeliveryResult,
    DeliveryRow,
    EventRow,
    HistoryRow,
    NewDelivery,
    NewTask,
    OutboxJob,
    OutboxRow,
    OutboxStats,
    Page,
    ReplayFilter,
    StoreError,
    StoreUnavailable,
    SubscriptionRow,
    TaskRow,
    TaskStats,
    TransitionLike,
    UnknownCursor,
    UnknownToken,
    WrongVideo,
)

__all__ = ["SQLiteStore"]

log = logging.getLogger("receiver.store")

T = TypeVar("T")
Unit = Callable[[sqlite3.Connection], Any]

_MAX_BATCH = 256
# Tasks as the API shows them: delivery counts derived from the deliveries rows.
_TASKS = (
    "SELECT t.*, (SELECT count(*) + coalesce(sum(d.repeats), 0) FROM deliveries d"
    " WHERE d.video_id = t.video_id AND d.task_pk IS NOT NULL) AS deliveries,"
    " (SELECT coalesce(sum(d.repeats), 0) FROM deliveries d"
    " WHERE d.video_id = t.video_id AND d.task_pk IS NOT NULL) AS duplicates FROM tasks t"
)
# A submit still "submitting" after this long lost its process (the provider call times out at 30 s).
ORPHAN_AFTER = 120.0
_TERMINAL = ("completed", "failed")


def _migrations() -> list[str]:
    """schema.sql, split at its `-- migration N` markers: item N-1 brings the schema to N."""
    text = resources.files("store").joinpath("schema.sql").read_text("utf-8")
    return [part for part in re.split(r"^-- migration \d+:.*$", text, flags=re.M) if part.strip()]


# The columns a delivery's decision needs (see TaskRow): the ack path reads only these.
_LEAN = "pk, video_id, status, video, created_at, next_poll_at, last_open_poll_at"


def _lean_task(row: sqlite3.Row) -> TaskRow:
    return TaskRow(row[0], row[1], row[2], orjson.loads(row[3]), row[4], row[5], row[6])


def _derived(row: sqlite3.Row | aiosqlite.Row, name: str) -> int:
    """A count the API reads add (see _TASKS); 0 where a write path read the bare row."""
    try:
        return int(row[name])
    except IndexError:
        return 0


def _task(row: sqlite3.Row | aiosqlite.Row) -> TaskRow:
    return TaskRow(
        pk=row["pk"],
        video_id=row["video_id"],
        status=row["status"],
        model=row["model"],
        video=orjson.loads(row["video"]),
        callback_url=row["callback_url"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        terminal_at=row["terminal_at"],
        resolved_by=row["resolved_by"],
        deliveries=_derived(row, "deliveries"),
        duplicates=_derived(row, "duplicates"),
        polls=row["polls"],
        anomalies=row["anomalies"],
        next_poll_at=row["next_poll_at"],
        poll_failures=row["poll_failures"],
        confirm_pending=bool(row["confirm_pending"]),
        expires_at=row["expires_at"],
        last_open_poll_at=row["last_open_poll_at"],
    )


def _event(row: sqlite3.Row | aiosqlite.Row) -> EventRow:
    return EventRow(
        pk=row["pk"],
        id=row["id"],
        task_pk=row["task_pk"],
        video_id=row["video_id"],
        type=row["type"],
        created_at=row["created_at"],
        data=json.loads(row["data"]),
    )


def delivery_pk(delivery_id: str) -> int | None:
    """dlv_<pk> -> pk (None for anything else)."""
    digits = delivery_id[4:] if delivery_id.startswith("dlv_") else ""
    return int(digits) if digits.isdigit() and len(digits) < 19 else None


def _delivery(row: sqlite3.Row | aiosqlite.Row) -> DeliveryRow:
    return DeliveryRow(
        pk=row["pk"],
        id=f"dlv_{row['pk']}",
        dedupe_key=row["dedupe_key"],
        task_pk=row["task_pk"],
        video_id=row["video_id"],
        route=row["route"],
        verified_by=row["verified_by"],
        headers=json.loads(row["headers"]),
        body=bytes(row["body"]),
        event_type=row["event_type"],
        status=row["status"],
        outcome=row["outcome"],
        repeats=row["repeats"],
        received_at=row["received_at"],
        last_seen_at=row["last_seen_at"],
    )


class SQLiteStore:
    """The embedded store. Writes go through one thread in batches: one commit (one fsync)
    covers every write queued while the previous commit was in flight, and each write runs in
    its own savepoint so that one failing write never undoes another."""

    def __init__(self, path: str, *, decide: Decide) -> None:
        if path == ":memory:":
            raise ValueError("the SQLite store needs a file path (WAL is shared between connections)")
        self._path = path
        self._decide = decide
        self._queue: asyncio.Queue[tuple[Unit, asyncio.Future[Any]] | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._conn: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._writer_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        parent = Path(self._path).parent
        parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open_writer)
        self._reader = await aiosqlite.connect(self._path)
        self._reader.row_factory = aiosqlite.Row
        await self._reader.execute("PRAGMA query_only = ON")
        self._writer_task = asyncio.create_task(self._writer_loop(), name="store-writer")

    def _open_writer(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: the commit that precedes an acknowledgement survives power loss, not only a crash.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # Index pages touched by inserts at random places (dedupe keys, video ids) stay in memory.
        conn.execute("PRAGMA cache_size = -65536")
        conn.execute("PRAGMA mmap_size = 268435456")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        migrations = _migrations()
        for number, script in enumerate(migrations[version:], start=version + 1):
            try:
                conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        self._conn = conn

    async def close(self) -> None:
        if self._writer_task is not None:
            await self._queue.put(None)
            await self._writer_task
            self._writer_task = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        loop = asyncio.get_running_loop()
        if self._conn is not None:
            await loop.run_in_executor(self._executor, self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self._write(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- the writer --------------------------------------------------------------------------

    async def _write(self, unit: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer_task is None or self._writer_task.done():
            raise StoreUnavailable("the store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((unit, future))
        return await future

    async def _writer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            item = await self._queue.get()
            if item is None:
                break
            batch = [item]
            # No timer: take what queued up while the last commit ran, so an idle store
            # commits at once and a busy one commits many writes per fsync.
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                extra = self._queue.get_nowait()
                if extra is None:
                    stopping = True
                    break
                batch.append(extra)
            units = [unit for unit, _ in batch]
            try:
                # The statements run here, on the event loop's thread: they are page-cache work
                # of microseconds, and a thread hop per batch would cost more than it saves (and
                # fight the loop for the GIL). Only the COMMIT, which waits on fsync, goes to the
                # writer thread, and the loop takes the next requests meanwhile; nothing else
                # touches this connection until it returns.
                results = self._run_units(units)
                await loop.run_in_executor(self._executor, self._commit)
            except Exception as exc:
                log.error("store commit failed: %s", type(exc).__name__)
                self._rollback()
                for _, future in batch:
                    if not future.done():
                        future.set_exception(StoreUnavailable("the store could not commit"))
                continue
            for (_, future), (ok, value) in zip(batch, results, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _run_units(self, units: list[Unit]) -> list[tuple[bool, Any]]:
        """Run a batch in one transaction. Optimistically without savepoints (two statements a
        write saved); if any write fails, roll back and run the batch again, each write in its
        own savepoint, so that one failing write never undoes another."""
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            return [(True, unit(conn)) for unit in units]
        except Exception:
            conn.execute("ROLLBACK")
        results: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        for unit in units:
            conn.execute("SAVEPOINT unit")
            try:
                value = unit(conn)
            except Exception as exc:
                conn.execute("ROLLBACK TO unit")
                conn.execute("RELEASE unit")
                if not isinstance(exc, StoreError):
                    log.exception("store write failed")
                    exc = StoreUnavailable("the store could not apply a write")
                results.append((False, exc))
            else:
                conn.execute("RELEASE unit")
                results.append((True, value))
        return results

    def _commit(self) -> None:
        assert self._conn is not None
        self._conn.execute("COMMIT")

    def _rollback(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.error("store rollback failed")

    # -- reads -------------------------------------------------------------------------------

    async def _fetchall(self, sql: str, params: tuple[Any, ...] = ()) -> list[aiosqlite.Row]:
        if self._reader is None:
            raise StoreUnavailable("the store is not open")
        # One call that steps the statement to its end: a cursor left open across awaits would
        # hold a read snapshot that every other read on this connection then shares (stale reads).
        return list(await self._reader.execute_fetchall(sql, params))

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

    async def task_by_video(self, video_id: str) -> TaskRow | None:
        rows = await self._fetchall(f"{_TASKS} WHERE t.video_id = ?", (video_id,))
        return _task(rows[0]) if rows else None

    async def task_by_pk(self, pk: int) -> TaskRow | None:
        rows = await self._fetchall(f"{_TASKS} WHERE t.pk = ?", (pk,))
        return _task(rows[0]) if rows else None

    async def list_tasks(self, status: str | None, limit: int, after: str | None) -> Page:
        where: list[str] = ["t.video_id IS NOT NULL"]
        params: list[Any] = []
        if after is not None:
            where.append("t.pk < ?")
            params.append(await self._cursor("tasks", "video_id", after))
        if status is not None:
            where.append("t.status = ?")
            params.append(status)
        return await self._page(_TASKS, "t.pk", where, params, limit, _task)

    async def list_deliveries(self, video_id: str | None, limit: int, after: str | None) -> Page:
        where: list[str] = []
        params: list[Any] = []
        if after is not None:
            pk = delivery_pk(after)
            if pk is None or not await self._fetchall("SELECT 1 FROM deliveries WHERE pk = ?", (pk,)):
                raise UnknownCursor(after)
            where.append("pk < ?")
            params.append(pk)
        if video_id is not None:
            where.append("video_id = ?")
            params.append(video_id)
        return await self._page("SELECT * FROM deliveries", "pk", where, params, limit, _delivery)

    async def get_delivery(self, delivery_id: str) -> DeliveryRow | None:
        pk = delivery_pk(delivery_id)
        rows = await self._fetchall("SELECT * FROM deliveries WHERE pk = ?", (pk,)) if pk is not None else []
        return _delivery(rows[0]) if rows else None

    async def unmatched_deliveries(self, video_id: str) -> list[DeliveryRow]:
        rows = await self._fetchall(
            "SELECT * FROM deliveries WHERE video_id = ? AND outcome = 'unmatched' ORDER BY pk",
            (video_id,),
        )
        return [_delivery(r) for r in rows]

    async def next_due(self) -> float | None:
        rows = await self._fetchall(
            "SELECT min(next_poll_at) AS due FROM tasks"
            " WHERE next_poll_at IS NOT NULL AND video_id IS NOT NULL"
        )
        due = rows[0]["due"] if rows else None
        return float(due) if due is not None else None

    async def model_history(self, model: str, limit: int) -> list[HistoryRow]:
        rows = await self._fetchall(
            "SELECT t.completion, t.terminal_at, EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.video_id = t.video_id AND d.task_pk IS NOT NULL) AS delivered FROM tasks t"
            " WHERE t.model = ? AND t.terminal_at IS NOT NULL AND t.completion IS NOT NULL"
            " ORDER BY t.terminal_at DESC LIMIT ?",
            (model, limit),
        )
        return [HistoryRow(r["completion"], r["terminal_at"], bool(r["delivered"])) for r in rows]

    async def task_stats(self) -> TaskStats:
        rows = await self._fetchall(
            "SELECT status, resolved_by, count(*) AS n FROM tasks GROUP BY status, resolved_by"
        )
        oldest = await self._fetchall(
            "SELECT min(created_at) AS t FROM tasks WHERE status IN ('submitting', 'queued', 'in_progress')"
        )
        return TaskStats({(r["status"], r["resolved_by"]): r["n"] for r in rows}, oldest[0]["t"])

    # -- writes ------------------------------------------------------------------------------

    async def claim_due(self, now: float, limit: int, lease: float) -> list[TaskRow]:
        """Take up to `limit` due tasks for polling: their next poll moves to now + lease, so no
        other poller takes them meanwhile, and a poller that dies leaves them due again."""

        def unit(conn: sqlite3.Connection) -> list[TaskRow]:
            rows = conn.execute(
                "SELECT * FROM tasks WHERE next_poll_at <= ? AND video_id IS NOT NULL"
                " ORDER BY next_poll_at LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE tasks SET next_poll_at = ? WHERE pk = ?", [(now + lease, r["pk"]) for r in rows]
            )
            return [_task(r) for r in rows]

        return await self._write(unit)

    async def create_task(self, new: NewTask) -> CreateResult:
        def unit(conn: sqlite3.Connection) -> CreateResult:
            if new.idem_key is not None:
                row = conn.execute(
                    "SELECT * FROM tasks WHERE idem_scope = ? AND idem_key = ?",
                    (new.idem_scope, new.idem_key),
                ).fetchone()
                if row is not None:
                    if row["request_hash"] != new.request_hash:
                        return CreateResult("mismatch")
                    if row["status"] == "submitting" and row["created_at"] > new.created_at - ORPHAN_AFTER:
                        return CreateResult("in_flight")
                    if row["status"] == "submitting":
                        # The process that made it died before the provider answered: release the
                        # key so the client's retry can submit (its token still takes deliveries).
                        conn.execute(
                            "UPDATE tasks SET idem_scope = NULL, idem_key = NULL WHERE pk = ?", (row["pk"],)
                        )
                        row = None
                if row is not None:
                    return CreateResult("exists", row["pk"], _task(row))
            cursor = conn.execute(
                "INSERT INTO tasks (token_hash, status, model, video, request, callback_url,"
                " idem_scope, idem_key, request_hash, created_at, updated_at, expires_at)"
                " VALUES (?, 'submitting', ?, '{}', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new.token_hash,
                    new.model,
                    json.dumps(new.request),
                    new.callback_url,
                    new.idem_scope,
                    new.idem_key,
                    new.request_hash,
                    new.created_at,
                    new.created_at,
                    new.expires_at,
                ),
            )
            if new.callback_url is not None:
                # The client's own callback_url: a subscription of this one task, signed with
                # RECEIVER_CALLBACK_SECRET (an empty secret here means "that setting").
                conn.execute(
                    "INSERT INTO subscriptions (id, url, events, secret, status, task_pk, created_at,"
                    " updated_at) VALUES (?, ?, NULL, '', 'active', ?, ?, ?)",
                    (
                        "sub_" + secrets.token_hex(12),
                        new.callback_url,
                        cursor.lastrowid,
                        new.created_at,
                        new.created_at,
                    ),
                )
            return CreateResult("created", cursor.lastrowid)

        return await self._write(unit)

    async def finish_submit(
        self,
        pk: int,
        video_id: str,
        status: str,
        video: dict[str, Any],
        now: float,
        next_poll_at: float,
    ) -> TaskRow:
        def unit(conn: sqlite3.Connection) -> TaskRow:
            task = _task(conn.execute("SELECT * FROM tasks WHERE pk = ?", (pk,)).fetchone())
            if task.video_id is not None and task.video_id != video_id:
                raise WrongVideo(video_id)
            other = conn.execute(
                "SELECT pk FROM tasks WHERE video_id = ? AND pk != ?", (video_id, pk)
            ).fetchone()
            if other is not None:
                raise WrongVideo(video_id)
            conn.execute("UPDATE tasks SET video_id = ?, updated_at = ? WHERE pk = ?", (video_id, now, pk))
            current = task.status if task.status != "submitting" else "submitting"
            result = self._decide(current, task.video, status, video)
            if result.outcome != "applied":
                # A delivery overtook our submit: keep its state, fill in what only the
                # submit answer carries (prompt, parameters...).
                merged = {**video, **task.video}
                conn.execute("UPDATE tasks SET video = ? WHERE pk = ?", (json.dumps(merged), pk))
            else:
                self._store_transition(conn, task, result, now, "poll", next_poll_at)
            if task.status == "submitting" and not result.became_terminal:
                conn.execute(
                    "UPDATE tasks SET next_poll_at = coalesce(next_poll_at, ?) WHERE pk = ?"
                    " AND status NOT IN ('completed', 'failed')",
                    (next_poll_at, pk),
                )
            return _task(conn.execute("SELECT * FROM tasks WHERE pk = ?", (pk,)).fetchone())

        return await self._write(unit)

    async def abandon_submit(self, pk: int) -> bool:
        def unit(conn: sqlite3.Connection) -> bool:
            heard = conn.execute("SELECT 1 FROM deliveries WHERE task_pk = ? LIMIT 1", (pk,)).fetchone()
            if heard is not None:
                # The provider called back, so the task exists there: keep it.
                return False
            conn.execute("DELETE FROM tasks WHERE pk = ? AND status = 'submitting'", (pk,))
            return True

        return await self._write(unit)

    async def record_delivery(self, delivery: NewDelivery) -> DeliveryResult:
        d = delivery

        def unit(conn: sqlite3.Connection) -> DeliveryResult:
            task: TaskRow | None = None
            if d.token_hash is not None:
                row = conn.execute(
                    f"SELECT {_LEAN} FROM tasks WHERE token_hash = ?", (d.token_hash,)
                ).fetchone()
                if row is None:
                    raise UnknownToken()
                task = _lean_task(row)
                if d.video_id is not None and task.video_id not in (None, d.video_id):
                    raise WrongVideo(d.video_id)
            elif d.video_id is not None:
                row = conn.execute(f"SELECT {_LEAN} FROM tasks WHERE video_id = ?", (d.video_id,)).fetchone()
                task = _lean_task(row) if row else None
            # Decide first (pure), so the delivery row is written once, with its outcome.
            result: TransitionLike | None = None
            if task is None:
                outcome = "unmatched" if d.actionable else "ignored"
            else:
                outcome, result = self._plan(task, d.status, d.video, d.actionable, d.needs_confirm)
            cursor = conn.execute(
                "INSERT OR IGNORE INTO deliveries (dedupe_key, task_pk, video_id, route,"
                " verified_by, headers, body, event_type, status, outcome, received_at,"
                " last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    d.dedupe_key,
                    task.pk if task else None,
                    d.video_id or (task.video_id if task else None),
                    d.route,
                    d.verified_by,
                    orjson.dumps(d.headers).decode(),
                    d.body,
                    d.event_type,
                    d.status,
                    outcome,
                    d.received_at,
                    d.received_at,
                ),
            )
            if cursor.rowcount == 0:
                # The UNIQUE dedupe key: a copy of a delivery we hold. Count it, change nothing.
                first = conn.execute(
                    "UPDATE deliveries SET repeats = repeats + 1, last_seen_at = ? WHERE dedupe_key = ?"
                    " RETURNING pk, outcome",
                    (d.received_at, d.dedupe_key),
                ).fetchone()
                return DeliveryResult(f"dlv_{first['pk']}", True, first["outcome"], None)
            delivery_id = f"dlv_{cursor.lastrowid}"
            if task is None:
                return DeliveryResult(delivery_id, False, outcome, None)
            claim = None
            if task.video_id is None and d.video_id is not None and self._video_free(conn, d.video_id):
                claim = d.video_id  # the delivery overtook our submit: it names the video first
            push = d.next_poll_at
            if outcome == "unchanged" and push is not None and task.next_poll_at is not None:
                # Still running, as we knew: push the next poll back only when it was due soon,
                # so a stream of progress updates does not rewrite the task each time.
                if task.next_poll_at > d.received_at + 0.5 * (push - d.received_at):
                    push = None
                outcome_write = "push" if push is not None else "unchanged"
            else:
                outcome_write = outcome
            sends = self._apply(
                conn,
                task,
                outcome_write,
                result,
                d.received_at,
                resolved_by="webhook",
                next_poll_at=push,
                claim=claim,
            )
            return DeliveryResult(delivery_id, False, outcome, None, sends is not None, sends or 0)

        return await self._write(unit)

    async def reapply_delivery(
        self,
        delivery_id: str,
        status: str | None,
        video: dict[str, Any] | None,
        needs_confirm: bool,
        now: float,
    ) -> DeliveryResult:
        def unit(conn: sqlite3.Connection) -> DeliveryResult:
            pk = delivery_pk(delivery_id)
            row = conn.execute("SELECT * FROM deliveries WHERE pk = ?", (pk,)).fetchone() if pk else None
            if row is None:
                raise UnknownCursor(delivery_id)
            delivery = _delivery(row)
            task_row = None
            if delivery.task_pk is not None:
                task_row = conn.execute("SELECT * FROM tasks WHERE pk = ?", (delivery.task_pk,)).fetchone()
            elif delivery.video_id is not None:
                task_row = conn.execute(
                    "SELECT * FROM tasks WHERE video_id = ?", (delivery.video_id,)
                ).fetchone()
            if task_row is None:
                return DeliveryResult(delivery.id, False, delivery.outcome, None)
            task = _task(task_row)
            first_match = delivery.task_pk is None
            claim = None
            if (
                first_match
                and task.video_id is None
                and delivery.video_id is not None
                and self._video_free(conn, delivery.video_id)
            ):
                claim = delivery.video_id
            outcome, result = self._plan(task, status, video, True, needs_confirm)
            sends = self._apply(
                conn, task, outcome, result, now, resolved_by="webhook", next_poll_at=None, claim=claim
            )
            if delivery.outcome == "unmatched":
                # First time this delivery meets its task; a replay of a settled one only
                # reports what it would do now, and leaves the record of what it did.
                conn.execute(
                    "UPDATE deliveries SET outcome = ?, task_pk = ? WHERE pk = ?",
                    (outcome, task.pk, delivery.pk),
                )
            return DeliveryResult(delivery.id, False, outcome, None, sends is not None, sends or 0)

        return await self._write(unit)

    async def record_poll(
        self,
        pk: int,
        status: str | None,
        video: dict[str, Any] | None,
        now: float,
        next_poll_at: float | None,
        *,
        resolved_by: str | None = None,
        failed: bool = False,
    ) -> TaskRow:
        def unit(conn: sqlite3.Connection) -> TaskRow:
            task = _task(conn.execute("SELECT * FROM tasks WHERE pk = ?", (pk,)).fetchone())
            terminal = task.status in _TERMINAL
            if resolved_by != "deadline":
                conn.execute("UPDATE tasks SET polls = polls + 1 WHERE pk = ?", (pk,))
            if failed or status is None or video is None:
                conn.execute(
                    "UPDATE tasks SET poll_failures = poll_failures + 1, next_poll_at = ? WHERE pk = ?",
                    (None if terminal else next_poll_at, pk),
                )
            else:
                result = self._decide(task.status, task.video, status, video)
                source = resolved_by or ("webhook" if task.confirm_pending else "poll")
                self._store_transition(conn, task, result, now, source, next_poll_at)
                if not result.became_terminal and not terminal:
                    conn.execute(
                        "UPDATE tasks SET next_poll_at = ?, poll_failures = 0, last_open_poll_at = ?"
                        " WHERE pk = ?",
                        (next_poll_at, now, pk),
                    )
            return _task(conn.execute("SELECT * FROM tasks WHERE pk = ?", (pk,)).fetchone())

        return await self._write(unit)

    # -- shared pieces of the write paths (run inside the writer's transaction) ---------------

    @staticmethod
    def _video_free(conn: sqlite3.Connection, video_id: str) -> bool:
        return conn.execute("SELECT 1 FROM tasks WHERE video_id = ?", (video_id,)).fetchone() is None

    def _plan(
        self,
        task: TaskRow,
        status: str | None,
        video: dict[str, Any] | None,
        actionable: bool,
        needs_confirm: bool,
    ) -> tuple[str, TransitionLike | None]:
        """What a delivery does to its task (pure): its outcome and the transition, if any."""
        if not actionable:
            return "ignored", None
        if needs_confirm or status is None or video is None:
            if task.status in _TERMINAL:
                return ("duplicate" if status in (None, task.status) else "anomaly"), None
            return "pending_confirm", None  # only our own GET may settle it: poll now
        result = self._decide(task.status, task.video, status, video)
        return result.outcome, result

    def _apply(
        self,
        conn: sqlite3.Connection,
        task: TaskRow,
        outcome: str,
        result: TransitionLike | None,
        now: float,
        *,
        resolved_by: str,
        next_poll_at: float | None,
        claim: str | None = None,
    ) -> int | None:
        """Write what an update did to its task in one UPDATE. Returns the number of sends
        queued when this recorded the terminal result, else None."""
        sets: list[str] = []
        params: list[Any] = []
        if claim is not None:
            sets.append("video_id = ?")
            params.append(claim)
        terminal = False
        if outcome == "pending_confirm":
            sets += ["confirm_pending = 1", "next_poll_at = ?"]
            params.append(now)
        elif outcome == "anomaly":
            sets.append("anomalies = anomalies + 1")
        elif outcome == "push" and next_poll_at is not None:
            sets.append("next_poll_at = max(coalesce(next_poll_at, 0), ?)")
            params.append(next_poll_at)
        elif outcome == "applied" and result is not None:
            sets += ["status = ?", "video = ?", "updated_at = ?"]
            params += [result.status, orjson.dumps(result.video).decode(), now]
            if result.became_terminal:
                terminal = True
                completion: float | None = None
                if resolved_by == "webhook":
                    completion = now - task.created_at
                elif resolved_by == "poll":
                    # The result appeared between the last poll that saw it open and this one.
                    since = task.last_open_poll_at or task.created_at
                    completion = (since + now) / 2 - task.created_at
                sets += [
                    "terminal_at = ?",
                    "resolved_by = ?",
                    "next_poll_at = NULL",
                    "confirm_pending = 0",
                    "completion = ?",
                ]
                params += [now, resolved_by, completion]
            elif next_poll_at is not None:
                # A newer non-terminal state pushes the next poll back, never forward.
                sets.append("next_poll_at = max(coalesce(next_poll_at, 0), ?)")
                params.append(next_poll_at)
        if sets:
            conn.execute(f"UPDATE tasks SET {', '.join(sets)} WHERE pk = ?", (*params, task.pk))
        if terminal:
            assert result is not None
            return self._record_terminal(conn, task, result, now, claim)
        return None

    def _record_terminal(
        self, conn: sqlite3.Connection, task: TaskRow, result: TransitionLike, now: float, claim: str | None
    ) -> int:
        """The result's one event, and its sends (the transactional outbox), in this transaction:
        "recorded but never queued" cannot happen."""
        video_id = task.video_id or claim or result.video.get("id")
        event = {**result.video, "id": video_id, "object": "video", "status": result.status}
        event.pop("provider_status", None)
        event_type = "video.completed" if result.status == "completed" else "video.failed"
        cursor = conn.execute(
            "INSERT INTO events (id, task_pk, video_id, type, created_at, data) VALUES (?, ?, ?, ?, ?, ?)",
            ("evt_" + secrets.token_hex(12), task.pk, video_id, event_type, now, json.dumps(event)),
        )
        sends = conn.execute(
            "INSERT INTO outbox (event_pk, subscription_pk, status, next_attempt_at, created_at)"
            " SELECT ?, pk, 'pending', ?, ? FROM subscriptions"
            " WHERE status IN ('active', 'paused') AND (task_pk = ? OR (task_pk IS NULL AND"
            " (events IS NULL OR EXISTS (SELECT 1 FROM json_each(subscriptions.events)"
            " WHERE value = ?))))",
            (cursor.lastrowid, now, now, task.pk, event_type),
        )
        return sends.rowcount

    def _store_transition(
        self,
        conn: sqlite3.Connection,
        task: TaskRow,
        result: TransitionLike,
        now: float,
        resolved_by: str,
        next_poll_at: float | None,
    ) -> int | None:
        return self._apply(
            conn, task, result.outcome, result, now, resolved_by=resolved_by, next_poll_at=next_poll_at
        )

    # -- fan-out: subscriptions, the outbox, attempts, replay ------------------------------------

    async def create_subscription(
        self, url: str, events: list[str] | None, secret: str, now: float
    ) -> SubscriptionRow:
        def unit(conn: sqlite3.Connection) -> SubscriptionRow:
            cursor = conn.execute(
                "INSERT INTO subscriptions (id, url, events, secret, status, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, 'active', ?, ?)",
                (
                    "sub_" + secrets.token_hex(12),
                    url,
                    json.dumps(events) if events is not None else None,
                    secret,
                    now,
                    now,
                ),
            )
            return _subscription(
                conn.execute("SELECT * FROM subscriptions WHERE pk = ?", (cursor.lastrowid,)).fetchone()
            )

        return await self._write(unit)

    async def get_subscription(self, subscription_id: str) -> SubscriptionRow | None:
        rows = await self._fetchall(
            "SELECT * FROM subscriptions WHERE id = ? AND status != 'deleted'", (subscription_id,)
        )
        return _subscription(rows[0]) if rows else None

    async def list_subscriptions(self, limit: int, after: str | None) -> Page:
        where: list[str] = ["task_pk IS NULL", "status != 'deleted'"]
        params: list[Any] = []
        if after is not None:
            where.append("pk < ?")
            params.append(await self._cursor("subscriptions", "id", after))
        return await self._page("SELECT * FROM subscriptions", "pk", where, params, limit, _subscription)

    async def set_subscription_status(
        self, subscription_id: str, status: str, now: float, reason: str | None = None
    ) -> SubscriptionRow | None:
        def unit(conn: sqlite3.Connection) -> SubscriptionRow | None:
            row = conn.execute(
                "SELECT * FROM subscriptions WHERE id = ? AND status != 'deleted'", (subscription_id,)
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE subscriptions SET status = ?, updated_at = ?, disabled_reason = ? WHERE pk = ?",
                (status, now, reason, row["pk"]),
            )
            if status in ("deleted", "disabled"):
                conn.execute(
                    "UPDATE outbox SET status = 'cancelled', next_attempt_at = NULL, settled_at = ?"
                    " WHERE subscription_pk = ? AND status = 'pending'",
                    (now, row["pk"]),
                )
            return _subscription(
                conn.execute("SELECT * FROM subscriptions WHERE pk = ?", (row["pk"],)).fetchone()
            )

        return await self._write(unit)

    async def claim_outbox(
        self, now: float, limit: int, per_subscription: int, busy: dict[int, int], lease: float
    ) -> list[OutboxJob]:
        """Take due sends, at most `per_subscription` in flight per subscriber (counting `busy`),
        so that one slow or dead subscriber never holds the others' places."""

        full = [pk for pk, n in busy.items() if n >= per_subscription]

        def unit(conn: sqlite3.Connection) -> list[OutboxJob]:
            # The earliest due sends, skipping subscribers already at their cap; a window a few
            # times the room, so one subscriber's backlog costs the others one round at most.
            rows = conn.execute(
                "SELECT o.pk AS opk, o.subscription_pk AS spk FROM outbox o"
                " JOIN subscriptions s ON s.pk = o.subscription_pk"
                " WHERE o.status = 'pending' AND o.next_attempt_at <= ? AND s.status = 'active'"
                f" AND o.subscription_pk NOT IN ({','.join('?' * len(full))})"
                " ORDER BY o.next_attempt_at LIMIT ?",
                (now, *full, limit * 4),
            ).fetchall()
            taken: list[int] = []
            counts = dict(busy)
            for row in rows:
                if counts.get(row["spk"], 0) >= per_subscription:
                    continue
                counts[row["spk"]] = counts.get(row["spk"], 0) + 1
                taken.append(row["opk"])
                if len(taken) == limit:
                    break
            if not taken:
                return []
            marks = ",".join("?" * len(taken))
            conn.execute(
                f"UPDATE outbox SET next_attempt_at = ? WHERE pk IN ({marks})", (now + lease, *taken)
            )
            joined = conn.execute(
                "SELECT o.pk AS opk, o.attempts AS oattempts, e.*, s.pk AS s_pk, s.id AS s_id,"
                " s.url AS s_url, s.events AS s_events, s.secret AS s_secret, s.status AS s_status,"
                " s.task_pk AS s_task_pk FROM outbox o JOIN events e ON e.pk = o.event_pk"
                f" JOIN subscriptions s ON s.pk = o.subscription_pk WHERE o.pk IN ({marks})",
                taken,
            ).fetchall()
            return [
                OutboxJob(
                    pk=r["opk"],
                    attempts=r["oattempts"],
                    event=_event(r),
                    subscription=SubscriptionRow(
                        pk=r["s_pk"],
                        id=r["s_id"],
                        url=r["s_url"],
                        events=json.loads(r["s_events"]) if r["s_events"] else None,
                        secret=r["s_secret"],
                        status=r["s_status"],
                        task_pk=r["s_task_pk"],
                    ),
                )
                for r in joined
            ]

        return await self._write(unit)

    async def record_attempt(self, attempt: Attempt) -> None:
        a = attempt

        def unit(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO attempts (outbox_pk, at, status, latency_ms, error) VALUES (?, ?, ?, ?, ?)",
                (a.outbox_pk, a.at, a.status, a.latency_ms, a.error),
            )
            status = {"retry": "pending"}.get(a.outcome, a.outcome)
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, status = ?, next_attempt_at = ?,"
                " settled_at = CASE WHEN ? = 'pending' THEN NULL ELSE ? END, last_status = ?,"
                " last_error = ? WHERE pk = ? AND status = 'pending'",
                (
                    status,
                    a.next_attempt_at if status == "pending" else None,
                    status,
                    a.at,
                    a.status,
                    a.error,
                    a.outbox_pk,
                ),
            )
            if a.disable_subscription:
                row = conn.execute(
                    "SELECT subscription_pk FROM outbox WHERE pk = ?", (a.outbox_pk,)
                ).fetchone()
                conn.execute(
                    "UPDATE subscriptions SET status = 'disabled', disabled_reason = ?, updated_at = ?"
                    " WHERE pk = ?",
                    ("the subscriber answered 410 Gone", a.at, row["subscription_pk"]),
                )
                conn.execute(
                    "UPDATE outbox SET status = 'cancelled', next_attempt_at = NULL, settled_at = ?"
                    " WHERE subscription_pk = ? AND status = 'pending'",
                    (a.at, row["subscription_pk"]),
                )

        await self._write(unit)

    async def next_outbox_due(self) -> float | None:
        rows = await self._fetchall(
            "SELECT min(o.next_attempt_at) AS due FROM outbox o JOIN subscriptions s"
            " ON s.pk = o.subscription_pk WHERE o.status = 'pending' AND s.status = 'active'"
        )
        due = rows[0]["due"] if rows else None
        return float(due) if due is not None else None

    async def queue_replay(self, selection: ReplayFilter, now: float, replay_id: str) -> tuple[int, int]:
        """Queue the selected events again, under their own ids, to one subscriber or to every
        subscriber they match now. Returns (events selected, sends queued)."""
        sel = selection

        def unit(conn: sqlite3.Connection) -> tuple[int, int]:
            where: list[str] = []
            params: list[Any] = []
            if sel.video_id is not None:
                where.append("e.video_id = ?")
                params.append(sel.video_id)
            if sel.since is not None:
                where.append("e.created_at >= ?")
                params.append(sel.since)
            if sel.until is not None:
                where.append("e.created_at < ?")
                params.append(sel.until)
            if sel.event_ids is not None:
                where.append(f"e.id IN ({','.join('?' * len(sel.event_ids))})")
                params.extend(sel.event_ids)
            clause = " AND ".join(where) or "1"
            selected = conn.execute(f"SELECT count(*) FROM events e WHERE {clause}", params).fetchone()[0]
            if sel.subscription_id is not None:
                match = "s.id = ? AND (s.task_pk IS NULL OR s.task_pk = e.task_pk)"
                match_params: list[Any] = [sel.subscription_id]
            else:
                match = (
                    "(s.task_pk = e.task_pk OR (s.task_pk IS NULL AND (s.events IS NULL OR EXISTS"
                    " (SELECT 1 FROM json_each(s.events) WHERE value = e.type))))"
                )
                match_params = []
            cursor = conn.execute(
                "INSERT INTO outbox (event_pk, subscription_pk, replay_id, status, next_attempt_at,"
                " created_at) SELECT e.pk, s.pk, ?, 'pending', ?, ? FROM events e JOIN subscriptions s"
                f" ON {match} WHERE s.status IN ('active', 'paused') AND {clause} ORDER BY e.pk",
                (replay_id, now, now, *match_params, *params),
            )
            return selected, cursor.rowcount

        return await self._write(unit)

    async def replay_progress(self, replay_id: str) -> dict[str, int]:
        rows = await self._fetchall(
            "SELECT status, count(*) AS n FROM outbox WHERE replay_id = ? GROUP BY status", (replay_id,)
        )
        return {r["status"]: r["n"] for r in rows}

    async def list_events(
        self, video_id: str | None, event_type: str | None, limit: int, after: str | None
    ) -> Page:
        where: list[str] = []
        params: list[Any] = []
        if after is not None:
            where.append("pk < ?")
            params.append(await self._cursor("events", "id", after))
        for column, value in (("video_id", video_id), ("type", event_type)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return await self._page("SELECT * FROM events", "pk", where, params, limit, _event)

    async def get_event(self, event_id: str) -> EventRow | None:
        rows = await self._fetchall("SELECT * FROM events WHERE id = ?", (event_id,))
        return _event(rows[0]) if rows else None

    async def event_sends(self, event_pk: int) -> list[OutboxRow]:
        rows = await self._fetchall(_OUTBOX_SELECT + " WHERE o.event_pk = ? ORDER BY o.pk", (event_pk,))
        attempts = await self._fetchall(
            "SELECT a.* FROM attempts a JOIN outbox o ON o.pk = a.outbox_pk WHERE o.event_pk = ?"
            " ORDER BY a.pk",
            (event_pk,),
        )
        log: dict[int, list[AttemptRow]] = {}
        for a in attempts:
            log.setdefault(a["outbox_pk"], []).append(
                AttemptRow(a["at"], a["status"], a["latency_ms"], a["error"])
            )
        return [_outbox(r, log.get(r["pk"], [])) for r in rows]

    async def list_outbox(
        self, status: str, subscription_id: str | None, limit: int, after: int | None
    ) -> Page:
        where: list[str] = ["o.status = ?"]
        params: list[Any] = [status]
        if subscription_id is not None:
            where.append("s.id = ?")
            params.append(subscription_id)
        if after is not None:
            where.append("o.pk < ?")
            params.append(after)
        return await self._page(_OUTBOX_SELECT, "o.pk", where, params, limit, lambda r: _outbox(r, []))

    async def events_after(self, event_id: str | None, limit: int) -> list[EventRow]:
        after = 0
        if event_id is not None:
            found = await self._fetchall("SELECT pk FROM events WHERE id = ?", (event_id,))
            if not found:
                raise UnknownCursor(event_id)
            after = found[0]["pk"]
        rows = await self._fetchall("SELECT * FROM events WHERE pk > ? ORDER BY pk LIMIT ?", (after, limit))
        return [_event(r) for r in rows]

    async def outbox_stats(self) -> OutboxStats:
        rows = await self._fetchall("SELECT status, count(*) AS n FROM outbox GROUP BY status")
        return OutboxStats({r["status"]: r["n"] for r in rows})


_OUTBOX_SELECT = (
    "SELECT o.*, e.id AS event_id, e.video_id AS video_id, s.id AS subscription_id, s.url AS url"
    " FROM outbox o JOIN events e ON e.pk = o.event_pk JOIN subscriptions s ON s.pk = o.subscription_pk"
)


def _outbox(row: sqlite3.Row | aiosqlite.Row, log: list[AttemptRow]) -> OutboxRow:
    return OutboxRow(
        pk=row["pk"],
        event_id=row["event_id"],
        video_id=row["video_id"],
        subscription_id=row["subscription_id"],
        url=row["url"],
        replay_id=row["replay_id"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        settled_at=row["settled_at"],
        last_status=row["last_status"],
        last_error=row["last_error"],
        log=log,
    )


def _subscription(row: sqlite3.Row | aiosqlite.Row) -> SubscriptionRow:
    return SubscriptionRow(
        pk=row["pk"],
        id=row["id"],
        url=row["url"],
        events=json.loads(row["events"]) if row["events"] is not None else None,
        secret=row["secret"],
        status=row["status"],
        task_pk=row["task_pk"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        disabled_reason=row["disabled_reason"],
    )
