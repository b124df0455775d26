"""PostgreSQL: tasks, inbound deliveries and polls. Each write locks its task row, asks
receiver.rules.decide, and writes the change set it returns."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from receiver.errors import StoreUnavailable, UnknownCursor, WrongVideo
from receiver.rules import decide
from receiver.rules.ids import new_id
from receiver.rules.records import (
    CreateResult,
    DeliveryResult,
    DeliveryRow,
    HistoryRow,
    NewDelivery,
    NewTask,
    Page,
    TaskRow,
    TaskStats,
    delivery_pk,
)
from store import rows
from store.postgres.base import COMMAND_TIMEOUT, VISIBLE, PostgresBase, keep_session
from store.postgres.changes import write_change
from store.postgres.writer import LOCK_TIMEOUT, DeliveryWriter

__all__ = ["TaskStore"]


async def _locked_task(conn: asyncpg.Connection, pk: int) -> TaskRow:
    return rows.task(await conn.fetchrow("SELECT * FROM tasks WHERE pk = $1 FOR UPDATE", pk))


async def _full_task(conn: asyncpg.Connection, pk: int) -> TaskRow:
    return rows.task(await conn.fetchrow(f"{rows.TASKS} WHERE t.pk = $1", pk))


async def _video_free(conn: asyncpg.Connection, video_id: str | None) -> bool:
    return not await conn.fetchval("SELECT 1 FROM tasks WHERE video_id = $1", video_id)


class TaskStore(PostgresBase):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._deliveries: DeliveryWriter | None = None
        self._writer_pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        await super().open()
        # The ack path's writer has a connection of its own, whose statements give up on a row
        # lock after LOCK_TIMEOUT: a task row held by another session (a long transaction, a
        # stopped process) then fails only that task's deliveries, not every batch behind it.
        # Its statements keep one generic plan each: every value is an array argument and every
        # lookup an index probe, so a plan made for one batch's values serves every batch, and
        # planning again per batch (the server's own choice, at times) was half its CPU for a
        # lone delivery and a fifth for a batch of 32 (the store path alone, no HTTP).
        self._writer_pool = await asyncpg.create_pool(
            self._url,
            min_size=1,
            max_size=1,
            command_timeout=COMMAND_TIMEOUT,
            reset=keep_session,
            server_settings={
                "lock_timeout": f"{int(LOCK_TIMEOUT * 1000)}ms",
                "plan_cache_mode": "force_generic_plan",
            },
        )
        self._deliveries = DeliveryWriter(self._writer_pool.acquire, self.announce)
        self._deliveries.start()

    async def close(self) -> None:
        if self._deliveries is not None:
            await self._deliveries.stop()
            self._deliveries = None
        if self._writer_pool is not None:
            await self._writer_pool.close()
            self._writer_pool = None
        await super().close()

    # -- reads -------------------------------------------------------------------------------

    async def task_by_video(self, video_id: str) -> TaskRow | None:
        found = await self._fetch(f"{rows.TASKS} WHERE t.video_id = $1", video_id)
        return rows.task(found[0]) if found else None

    async def task_by_pk(self, pk: int) -> TaskRow | None:
        found = await self._fetch(f"{rows.TASKS} WHERE t.pk = $1", pk)
        return rows.task(found[0]) if found else None

    async def list_tasks(self, status: str | None, limit: int, after: str | None) -> Page:
        where = ["t.video_id IS NOT NULL", VISIBLE.format(tx="t.listed_tx")]
        args: list[Any] = []
        if after is not None:
            args += await self._position("tasks", "video_id", after, order="listed_tx")
            where.append(f"(t.listed_tx, t.pk) < (${len(args) - 1}, ${len(args)})")
        if status is not None:
            args.append(status)
            where.append(f"t.status = ${len(args)}")
        return await self._page(rows.TASKS, "t.listed_tx DESC, t.pk DESC", where, args, limit, rows.task)

    async def list_deliveries(self, video_id: str | None, limit: int, after: str | None) -> Page:
        where = [VISIBLE.format(tx="tx")]
        args: list[Any] = []
        if after is not None:
            pk = delivery_pk(after)
            if pk is None:
                raise UnknownCursor(after)
            args += await self._position("deliveries", "pk", pk)
            where.append(f"(tx, pk) < (${len(args) - 1}, ${len(args)})")
        if video_id is not None:
            args.append(video_id)
            where.append(f"video_id = ${len(args)}")
        return await self._page(
            "SELECT * FROM deliveries", "tx DESC, pk DESC", where, args, limit, rows.delivery
        )

    async def get_delivery(self, delivery_id: str) -> DeliveryRow | None:
        pk = delivery_pk(delivery_id)
        found = await self._fetch("SELECT * FROM deliveries WHERE pk = $1", pk) if pk is not None else []
        return rows.delivery(found[0]) if found else None

    async def unmatched_deliveries(self, video_id: str) -> list[DeliveryRow]:
        found = await self._fetch(
            "SELECT * FROM deliveries WHERE video_id = $1 AND outcome = 'unmatched' ORDER BY pk", video_id
        )
        return [rows.delivery(r) for r in found]

    async def next_due(self) -> float | None:
        found = await self._fetch(
            "SELECT min(next_poll_at) AS due FROM tasks"
            " WHERE next_poll_at IS NOT NULL AND video_id IS NOT NULL"
        )
        due = found[0]["due"] if found else None
        return float(due) if due is not None else None

    async def model_history(self, model: str, limit: int) -> list[HistoryRow]:
        found = await self._fetch(
            "SELECT t.completion, t.terminal_at, EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.video_id = t.video_id AND d.task_pk IS NOT NULL) AS delivered FROM tasks t"
            " WHERE t.model = $1 AND t.terminal_at IS NOT NULL AND t.completion IS NOT NULL"
            " ORDER BY t.terminal_at DESC LIMIT $2",
            model,
            limit,
        )
        return [HistoryRow(r["completion"], r["terminal_at"], bool(r["delivered"])) for r in found]

    async def open_tasks(self, model: str, limit: int) -> list[float]:
        # Every open task has a next poll time: the partial index on it holds only open tasks.
        found = await self._fetch(
            "SELECT created_at FROM tasks WHERE next_poll_at IS NOT NULL AND video_id IS NOT NULL"
            " AND model = $1 ORDER BY created_at DESC LIMIT $2",
            model,
            limit,
        )
        return [r["created_at"] for r in found]

    async def advance_polls(self, model: str, first: float, now: float) -> int:
        async with self._tx() as conn:
            status = await conn.execute(
                "UPDATE tasks SET next_poll_at = GREATEST($1, created_at + $2) WHERE next_poll_at IS NOT NULL"
                " AND video_id IS NOT NULL AND model = $3 AND next_poll_at > GREATEST($1, created_at + $2)",
                now,
                first,
                model,
            )
        return int(status.split()[-1])

    async def task_stats(self) -> TaskStats:
        found = await self._counts("tasks")
        oldest = await self._fetch(
            "SELECT created_at FROM tasks WHERE status IN ('submitting', 'queued', 'in_progress')"
            " ORDER BY created_at LIMIT 1"
        )
        return TaskStats(rows.counted(found), oldest[0]["created_at"] if oldest else None)

    # -- writes ------------------------------------------------------------------------------

    async def claim_due(self, now: float, limit: int, lease: float) -> list[TaskRow]:
        """Take up to `limit` due tasks: the lease is written into next_poll_at, so the rows leave
        the due range (a claim never walks past leased rows), other processes skip the locked
        ones, and a process that dies leaves them due again when the lease runs out."""
        async with self._tx() as conn:
            found = await conn.fetch(
                "WITH due AS (SELECT pk FROM tasks WHERE next_poll_at <= $1 AND video_id IS NOT NULL"
                " ORDER BY next_poll_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
                " UPDATE tasks t SET next_poll_at = $3 FROM due WHERE t.pk = due.pk RETURNING t.*",
                now,
                limit,
                now + lease,
            )
        return [rows.task(r) for r in found]

    async def create_task(self, new: NewTask) -> CreateResult:
        async with self._tx() as conn:
            if new.idem_key is not None:
                # Two processes with one key: the second waits on the unique index until the
                # first commits, then finds its row. One provider task either way.
                row = await conn.fetchrow(
                    "SELECT * FROM tasks WHERE idem_scope = $1 AND idem_key = $2 FOR UPDATE",
                    new.idem_scope,
                    new.idem_key,
                )
                if row is not None:
                    verdict = decide.on_submit_retry(
                        row["request_hash"],
                        row["status"],
                        row["created_at"],
                        new.request_hash,
                        new.created_at,
                        orphan_after=new.orphan_after,
                        confirm_window=new.confirm_window,
                    )
                    if verdict in ("mismatch", "in_flight", "unconfirmed"):
                        return CreateResult(verdict)
                    if verdict == "exists":
                        return CreateResult("exists", row["pk"], rows.task(row))
                    await conn.execute(
                        "UPDATE tasks SET idem_scope = NULL, idem_key = NULL WHERE pk = $1", row["pk"]
                    )
            pk = await conn.fetchval(
                "INSERT INTO tasks (token_hash, status, model, video, request, callback_url,"
                " idem_scope, idem_key, request_hash, created_at, updated_at, expires_at)"
                " VALUES ($1, 'submitting', $2, '{}', $3, $4, $5, $6, $7, $8, $8, $9)"
                " ON CONFLICT (idem_scope, idem_key) DO NOTHING RETURNING pk",
                new.token_hash,
                new.model,
                json.dumps(new.request),
                new.callback_url,
                new.idem_scope,
                new.idem_key,
                new.request_hash,
                new.created_at,
                new.expires_at,
            )
            if pk is None:
                return CreateResult("in_flight")  # the other process's row committed meanwhile
            if new.callback_url is not None:
                await conn.execute(
                    "INSERT INTO subscriptions (id, url, events, secret, status, task_pk, created_at,"
                    " updated_at) VALUES ($1, $2, NULL, '', 'active', $3, $4, $4)",
                    new_id("subscription"),
                    new.callback_url,
                    pk,
                    new.created_at,
                )
            return CreateResult("created", pk)

    async def finish_submit(
        self,
        pk: int,
        video_id: str,
        status: str,
        video: dict[str, Any],
        now: float,
        next_poll_at: float,
    ) -> TaskRow:
        async with self._tx() as conn:
            task = await _locked_task(conn, pk)
            owner = await conn.fetchval("SELECT pk FROM tasks WHERE video_id = $1", video_id)
            if owner is not None and owner != pk:
                raise WrongVideo(video_id)
            change = decide.on_submit_answer(task, video_id, status, video, now, next_poll_at)
            recorded = await write_change(conn, pk, change) is not None
            answer = await _full_task(conn, pk)
        if recorded:
            self.announce("events,outbox")
        return answer

    async def abandon_submit(self, pk: int) -> bool:
        async with self._tx() as conn:
            await _locked_task(conn, pk)
            if await conn.fetchval("SELECT 1 FROM deliveries WHERE task_pk = $1 LIMIT 1", pk):
                return False  # the provider called back, so the task exists there: keep it
            await conn.execute("DELETE FROM tasks WHERE pk = $1 AND status = 'submitting'", pk)
            return True

    async def unconfirm_submit(self, pk: int, now: float) -> TaskRow | None:
        async with self._tx() as conn:
            row = await conn.fetchrow("SELECT * FROM tasks WHERE pk = $1 FOR UPDATE", pk)
            if row is None:
                return None
            await write_change(conn, pk, decide.on_submit_unknown(rows.task(row), now))
            return await _full_task(conn, pk)

    async def sweep_submits(self, orphan_before: float, expire_before: float, limit: int) -> tuple[int, int]:
        async with self._tx() as conn:
            orphaned = await conn.fetch(
                "UPDATE tasks SET status = 'unconfirmed' WHERE pk IN (SELECT pk FROM tasks"
                " WHERE status = 'submitting' AND created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
                " RETURNING pk",
                orphan_before,
                limit,
            )
            # Locked, so the ack path's writer, which checks each row's version when it writes,
            # decides again (an unknown token) rather than naming a deleted task.
            expired = await conn.fetch(
                "DELETE FROM tasks WHERE pk IN (SELECT pk FROM tasks WHERE status = 'unconfirmed'"
                " AND created_at < $1 AND video_id IS NULL LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING pk",
                expire_before,
                limit,
            )
            if expired:
                # What SQLite's foreign key does: a delivery that named no video forgets the task.
                await conn.execute(
                    "UPDATE deliveries SET task_pk = NULL WHERE task_pk = ANY($1::bigint[])",
                    [r["pk"] for r in expired],
                )
        return len(orphaned), len(expired)

    async def record_delivery(self, delivery: NewDelivery) -> DeliveryResult:
        if self._deliveries is None:
            raise StoreUnavailable("the store is not open")
        return await self._deliveries.record(delivery)

    async def reapply_delivery(
        self,
        delivery_id: str,
        status: str | None,
        video: dict[str, Any] | None,
        needs_confirm: bool,
        now: float,
    ) -> DeliveryResult:
        pk = delivery_pk(delivery_id)
        async with self._tx() as conn:
            row = await conn.fetchrow("SELECT * FROM deliveries WHERE pk = $1", pk) if pk else None
            if row is None:
                raise UnknownCursor(delivery_id)
            delivery = rows.delivery(row)
            task_pk = delivery.task_pk
            if task_pk is None and delivery.video_id is not None:
                task_pk = await conn.fetchval("SELECT pk FROM tasks WHERE video_id = $1", delivery.video_id)
            if task_pk is None:
                return DeliveryResult(delivery.id, False, delivery.outcome, None)
            task = await _locked_task(conn, task_pk)
            free = decide.claims_video(task, delivery.video_id) and await _video_free(conn, delivery.video_id)
            outcome, change, stored = decide.on_replay(
                task, delivery, status, video, needs_confirm, now, video_free=free
            )
            sends = await write_change(conn, task.pk, change)
            if stored is not None:
                await conn.execute(
                    "UPDATE deliveries SET outcome = $1, task_pk = $2 WHERE pk = $3",
                    stored,
                    task.pk,
                    delivery.pk,
                )
        if sends is not None:
            self.announce("events,outbox")
        return DeliveryResult(delivery.id, False, outcome, None, sends is not None, sends or 0)

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
        async with self._tx() as conn:
            task = await _locked_task(conn, pk)
            change = decide.on_poll(
                task, status, video, now, next_poll_at, resolved_by=resolved_by, failed=failed
            )
            recorded = await write_change(conn, pk, change) is not None
            answer = await _full_task(conn, pk)
        if recorded:
            self.announce("events,outbox")
        return answer
