"""SQLite: tasks, inbound deliveries and polls. Each write reads its rows, asks receiver.rules.decide,
and writes the change set it returns."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from receiver.errors import UnknownCursor, WrongVideo
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
    TaskChange,
    TaskRow,
    TaskStats,
    delivery_pk,
)
from store import rows
from store.sqlite.base import SQLiteBase
from store.sqlite.deliveries import LISTED, DeliveryBatcher, record_events, stored

__all__ = ["TaskStore", "write_change"]


def write_change(conn: sqlite3.Connection, task_pk: int, change: TaskChange) -> int | None:
    """Write a change set: one UPDATE (none when nothing changes), and for a terminal result its
    event and sends. Returns the number of sends queued when it recorded an event, else None."""
    sets = [f"{column} = ?" for column in change.sets]
    params = [stored(column, value) for column, value in change.sets.items()]
    sets += [f"{column} = {column} + ?" for column in change.adds]
    params += list(change.adds.values())
    if "video_id" in change.sets:
        sets.append(LISTED)
    if sets:
        conn.execute(f"UPDATE tasks SET {', '.join(sets)} WHERE pk = ?", (*params, task_pk))
    if change.event is None:
        return None
    return record_events(conn, {task_pk: TaskChange(event=change.event)})[task_pk]


def _video_free(conn: sqlite3.Connection, video_id: str | None) -> bool:
    return conn.execute("SELECT 1 FROM tasks WHERE video_id = ?", (video_id,)).fetchone() is None


def _full_task(conn: sqlite3.Connection, pk: int) -> TaskRow:
    return rows.task(conn.execute("SELECT * FROM tasks WHERE pk = ?", (pk,)).fetchone())


class TaskStore(SQLiteBase):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._deliveries = DeliveryBatcher(self._writer)

    # -- reads -------------------------------------------------------------------------------

    async def task_by_video(self, video_id: str) -> TaskRow | None:
        found = await self._fetchall(f"{rows.TASKS} WHERE t.video_id = ?", (video_id,))
        return rows.task(found[0]) if found else None

    async def task_by_pk(self, pk: int) -> TaskRow | None:
        found = await self._fetchall(f"{rows.TASKS} WHERE t.pk = ?", (pk,))
        return rows.task(found[0]) if found else None

    async def list_tasks(self, status: str | None, limit: int, after: str | None) -> Page:
        where: list[str] = ["t.video_id IS NOT NULL"]
        params: list[Any] = []
        if after is not None:
            found = await self._fetchall("SELECT listed_seq, pk FROM tasks WHERE video_id = ?", (after,))
            if not found:
                raise UnknownCursor(after)
            where.append("(t.listed_seq, t.pk) < (?, ?)")
            params += [found[0]["listed_seq"], found[0]["pk"]]
        if status is not None:
            where.append("t.status = ?")
            params.append(status)
        return await self._page(rows.TASKS, "t.listed_seq DESC, t.pk", where, params, limit, rows.task)

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
        return await self._page("SELECT * FROM deliveries", "pk", where, params, limit, rows.delivery)

    async def get_delivery(self, delivery_id: str) -> DeliveryRow | None:
        pk = delivery_pk(delivery_id)
        found = await self._fetchall("SELECT * FROM deliveries WHERE pk = ?", (pk,)) if pk is not None else []
        return rows.delivery(found[0]) if found else None

    async def unmatched_deliveries(self, video_id: str) -> list[DeliveryRow]:
        found = await self._fetchall(
            "SELECT * FROM deliveries WHERE video_id = ? AND outcome = 'unmatched' ORDER BY pk",
            (video_id,),
        )
        return [rows.delivery(r) for r in found]

    async def next_due(self) -> float | None:
        found = await self._fetchall(
            "SELECT min(next_poll_at) AS due FROM tasks"
            " WHERE next_poll_at IS NOT NULL AND video_id IS NOT NULL"
        )
        due = found[0]["due"] if found else None
        return float(due) if due is not None else None

    async def model_history(self, model: str, limit: int) -> list[HistoryRow]:
        found = await self._fetchall(
            "SELECT t.completion, t.terminal_at, EXISTS (SELECT 1 FROM deliveries d"
            " WHERE d.video_id = t.video_id AND d.task_pk IS NOT NULL) AS delivered FROM tasks t"
            " WHERE t.model = ? AND t.terminal_at IS NOT NULL AND t.completion IS NOT NULL"
            " ORDER BY t.terminal_at DESC LIMIT ?",
            (model, limit),
        )
        return [HistoryRow(r["completion"], r["terminal_at"], bool(r["delivered"])) for r in found]

    async def open_tasks(self, model: str, limit: int) -> list[float]:
        # Every open task has a next poll time: the partial index on it holds only open tasks.
        found = await self._fetchall(
            "SELECT created_at FROM tasks WHERE next_poll_at IS NOT NULL AND video_id IS NOT NULL"
            " AND model = ? ORDER BY created_at DESC LIMIT ?",
            (model, limit),
        )
        return [r["created_at"] for r in found]

    async def advance_polls(self, model: str, first: float, now: float) -> int:
        def unit(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE tasks SET next_poll_at = max(?, created_at + ?) WHERE next_poll_at IS NOT NULL"
                " AND video_id IS NOT NULL AND model = ? AND next_poll_at > max(?, created_at + ?)",
                (now, first, model, now, first),
            ).rowcount

        return await self._write(unit)

    async def task_stats(self) -> TaskStats:
        found = await self._counts("tasks")
        oldest = await self._fetchall(
            "SELECT created_at FROM tasks WHERE status IN ('submitting', 'queued', 'in_progress')"
            " ORDER BY created_at LIMIT 1"
        )
        return TaskStats(rows.counted(found), oldest[0]["created_at"] if oldest else None)

    # -- writes ------------------------------------------------------------------------------

    async def claim_due(self, now: float, limit: int, lease: float) -> list[TaskRow]:
        """Take up to `limit` due tasks for polling: their next poll moves to now + lease (out of
        the due range), so no other poller takes them meanwhile, and a poller that dies leaves
        them due again."""

        def unit(conn: sqlite3.Connection) -> list[TaskRow]:
            found = conn.execute(
                "UPDATE tasks SET next_poll_at = ? WHERE pk IN (SELECT pk FROM tasks"
                " WHERE next_poll_at <= ? AND video_id IS NOT NULL ORDER BY next_poll_at LIMIT ?)"
                " RETURNING *",
                (now + lease, now, limit),
            ).fetchall()
            return [rows.task(r) for r in found]

        return await self._write(unit)

    async def create_task(self, new: NewTask) -> CreateResult:
        def unit(conn: sqlite3.Connection) -> CreateResult:
            if new.idem_key is not None:
                row = conn.execute(
                    "SELECT * FROM tasks WHERE idem_scope = ? AND idem_key = ?",
                    (new.idem_scope, new.idem_key),
                ).fetchone()
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
                    # The orphan keeps its token (it still takes deliveries) but frees the key.
                    conn.execute(
                        "UPDATE tasks SET idem_scope = NULL, idem_key = NULL WHERE pk = ?", (row["pk"],)
                    )
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
                        new_id("subscription"),
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
            task = _full_task(conn, pk)
            owner = conn.execute("SELECT pk FROM tasks WHERE video_id = ?", (video_id,)).fetchone()
            if owner is not None and owner["pk"] != pk:
                raise WrongVideo(video_id)
            write_change(conn, pk, decide.on_submit_answer(task, video_id, status, video, now, next_poll_at))
            return _full_task(conn, pk)

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

    async def unconfirm_submit(self, pk: int, now: float) -> TaskRow | None:
        def unit(conn: sqlite3.Connection) -> TaskRow | None:
            row = conn.execute("SELECT * FROM tasks WHERE pk = ?", (pk,)).fetchone()
            if row is None:
                return None
            write_change(conn, pk, decide.on_submit_unknown(rows.task(row), now))
            return _full_task(conn, pk)

        return await self._write(unit)

    async def sweep_submits(self, orphan_before: float, expire_before: float, limit: int) -> tuple[int, int]:
        def unit(conn: sqlite3.Connection) -> tuple[int, int]:
            orphaned = conn.execute(
                "UPDATE tasks SET status = 'unconfirmed' WHERE pk IN (SELECT pk FROM tasks"
                " WHERE status = 'submitting' AND created_at < ? LIMIT ?)",
                (orphan_before, limit),
            ).rowcount
            # A delivery that named no video keeps its row; the foreign key forgets the task.
            expired = conn.execute(
                "DELETE FROM tasks WHERE pk IN (SELECT pk FROM tasks WHERE status = 'unconfirmed'"
                " AND created_at < ? AND video_id IS NULL LIMIT ?)",
                (expire_before, limit),
            ).rowcount
            return orphaned, expired

        return await self._write(unit)

    async def record_delivery(self, delivery: NewDelivery) -> DeliveryResult:
        return await self._deliveries.record(delivery)

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
            delivery = rows.delivery(row)
            task_row = None
            if delivery.task_pk is not None:
                task_row = conn.execute("SELECT * FROM tasks WHERE pk = ?", (delivery.task_pk,)).fetchone()
            elif delivery.video_id is not None:
                task_row = conn.execute(
                    "SELECT * FROM tasks WHERE video_id = ?", (delivery.video_id,)
                ).fetchone()
            if task_row is None:
                return DeliveryResult(delivery.id, False, delivery.outcome, None)
            task = rows.task(task_row)
            free = decide.claims_video(task, delivery.video_id) and _video_free(conn, delivery.video_id)
            outcome, change, stored = decide.on_replay(
                task, delivery, status, video, needs_confirm, now, video_free=free
            )
            sends = write_change(conn, task.pk, change)
            if stored is not None:
                conn.execute(
                    "UPDATE deliveries SET outcome = ?, task_pk = ? WHERE pk = ?",
                    (stored, task.pk, delivery.pk),
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
            task = _full_task(conn, pk)
            change = decide.on_poll(
                task, status, video, now, next_poll_at, resolved_by=resolved_by, failed=failed
            )
            write_change(conn, pk, change)
            return _full_task(conn, pk)

        return await self._write(unit)
