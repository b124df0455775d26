"""SQLite: retention's statements, each batch one unit of the writer (the ack path's writer), so a
delivery's acknowledgement waits for at most one small batch, never for a pass.

Freed pages are reused from SQLite's freelist; the file is not shrunk (no auto-vacuum). Measured
with a pass a day under a steady load (400 tasks a day, 30 days' bodies, 40 days' tasks): from
day 45 to day 70 the file grew 0.26 MB with plain freelist reuse (23.64 MB, 2.4% of its pages
free after a pass, taken again by the next day's writes) and 0.22 MB with incremental
auto-vacuum run after every pass (23.06 MB). Both reach the same steady state; incremental
auto-vacuum only hands one pass's pages back to the system for the next writes to take again,
costs pointer-map pages and page moves, and an existing store would need a full VACUUM (the
writer blocked for as long as it takes) to switch to it."""

from __future__ import annotations

import json
import sqlite3

from receiver.rules.records import CaptureRow, PruneRun
from store import rows
from store.preview import preview_counts
from store.sqlite.base import SQLiteBase

__all__ = ["RetentionStore"]

_EVENTS_OF = "SELECT pk FROM events WHERE task_pk IN (SELECT value FROM json_each(?))"


def _fan_out_of(conn: sqlite3.Connection, tasks: str) -> dict[str, int]:
    """Delete the events of `tasks` (a JSON list of pks) with their sends and attempts."""
    attempts = conn.execute(
        f"DELETE FROM attempts WHERE outbox_pk IN (SELECT pk FROM outbox WHERE event_pk IN ({_EVENTS_OF}))",
        (tasks,),
    ).rowcount
    outbox = conn.execute(f"DELETE FROM outbox WHERE event_pk IN ({_EVENTS_OF})", (tasks,)).rowcount
    events = conn.execute(
        "DELETE FROM events WHERE task_pk IN (SELECT value FROM json_each(?))", (tasks,)
    ).rowcount
    return {"attempts": attempts, "outbox": outbox, "events": events}


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for table, n in counts.items():
        if n:
            into[table] = into.get(table, 0) + n


class RetentionStore(SQLiteBase):
    async def take_lease(self, name: str, holder: str, now: float, until: float) -> bool:
        def unit(conn: sqlite3.Connection) -> bool:
            taken = conn.execute(
                "UPDATE leases SET holder = ?, until = ? WHERE name = ? AND (holder = ? OR until <= ?)",
                (holder, until, name, holder, now),
            ).rowcount
            return bool(taken)

        return await self._write(unit)

    async def release_lease(self, name: str, holder: str, run: PruneRun | None = None) -> None:
        def unit(conn: sqlite3.Connection) -> None:
            if run is not None:
                conn.execute(
                    "UPDATE leases SET last_at = ?, last_took = ?, last_counts = ?"
                    " WHERE name = ? AND holder = ?",
                    (run.at, run.took, json.dumps(run.counts, sort_keys=True), name, holder),
                )
            conn.execute(
                "UPDATE leases SET holder = NULL, until = 0 WHERE name = ? AND holder = ?", (name, holder)
            )

        await self._write(unit)

    async def last_prune(self) -> PruneRun:
        found = await self._fetchall(
            "SELECT last_at, last_took, last_counts FROM leases WHERE name = 'prune'"
        )
        if not found or found[0]["last_at"] is None:
            return PruneRun()
        row = found[0]
        return PruneRun(row["last_at"], row["last_took"], json.loads(row["last_counts"] or "{}"))

    async def prune_bodies(self, ended_before: float, now: float, limit: int) -> tuple[dict[str, int], bool]:
        def unit(conn: sqlite3.Connection) -> tuple[dict[str, int], bool]:
            pks = [
                r[0]
                for r in conn.execute(
                    "SELECT pk FROM tasks WHERE terminal_at < ? AND pruned_at IS NULL"
                    " ORDER BY terminal_at LIMIT ?",
                    (ended_before, limit),
                )
            ]
            counts: dict[str, int] = {}
            if pks:
                tasks = json.dumps(pks)
                _add(counts, _fan_out_of(conn, tasks))
                bodies = conn.execute(
                    "UPDATE deliveries SET body = X'', headers = '{}', pruned_at = ?"
                    " WHERE task_pk IN (SELECT value FROM json_each(?)) AND pruned_at IS NULL",
                    (now, tasks),
                ).rowcount
                _add(counts, {"delivery_bodies": bodies})
                conn.execute(
                    "UPDATE tasks SET pruned_at = ? WHERE pk IN (SELECT value FROM json_each(?))",
                    (now, tasks),
                )
            taskless = conn.execute(
                "UPDATE deliveries SET body = X'', headers = '{}', pruned_at = ? WHERE pk IN (SELECT pk FROM"
                " deliveries WHERE task_pk IS NULL AND pruned_at IS NULL AND received_at < ? LIMIT ?)",
                (now, ended_before, limit),
            ).rowcount
            _add(counts, {"delivery_bodies": taskless})
            return counts, len(pks) == limit or taskless == limit

        return await self._write(unit)

    async def prune_tasks(self, ended_before: float, limit: int) -> tuple[dict[str, int], bool]:
        def unit(conn: sqlite3.Connection) -> tuple[dict[str, int], bool]:
            pks = [
                r[0]
                for r in conn.execute(
                    "SELECT pk FROM tasks WHERE terminal_at < ? ORDER BY terminal_at LIMIT ?",
                    (ended_before, limit),
                )
            ]
            counts: dict[str, int] = {}
            if pks:
                tasks = json.dumps(pks)
                _add(counts, _fan_out_of(conn, tasks))
                within = "IN (SELECT value FROM json_each(?))"
                _add(
                    counts,
                    {
                        "deliveries": conn.execute(
                            f"DELETE FROM deliveries WHERE task_pk {within}", (tasks,)
                        ).rowcount,
                        "captures": conn.execute(
                            f"DELETE FROM captures WHERE task_pk {within}", (tasks,)
                        ).rowcount,
                        # A task's own callback_url subscription (its sends went with its events).
                        "subscriptions": conn.execute(
                            f"DELETE FROM subscriptions WHERE task_pk {within}", (tasks,)
                        ).rowcount,
                        "tasks": conn.execute(f"DELETE FROM tasks WHERE pk {within}", (tasks,)).rowcount,
                    },
                )
            taskless = conn.execute(
                "DELETE FROM deliveries WHERE pk IN (SELECT pk FROM deliveries"
                " WHERE task_pk IS NULL AND received_at < ? LIMIT ?)",
                (ended_before, limit),
            ).rowcount
            _add(counts, {"deliveries": taskless})
            return counts, len(pks) == limit or taskless == limit

        return await self._write(unit)

    async def expiring_files(
        self, kept_before: float | None, ended_before: float | None, limit: int
    ) -> list[CaptureRow]:
        found = []
        if kept_before is not None:
            found += await self._fetchall(
                "SELECT * FROM captures WHERE status = 'kept' AND settled_at < ? ORDER BY settled_at LIMIT ?",
                (kept_before, limit),
            )
        if ended_before is not None and len(found) < limit:
            found += await self._fetchall(
                "SELECT c.* FROM tasks t JOIN captures c ON c.task_pk = t.pk"
                " WHERE t.terminal_at < ? AND c.status = 'kept' ORDER BY t.terminal_at LIMIT ?",
                (ended_before, limit - len(found)),
            )
        unique = {r["pk"]: rows.capture(r) for r in found}
        return list(unique.values())

    async def expire_files(self, pks: list[int]) -> int:
        if not pks:
            return 0
        return int(
            await self._write(
                lambda conn: (
                    conn.execute(
                        "UPDATE captures SET status = 'expired', key = NULL"
                        " WHERE status = 'kept' AND pk IN (SELECT value FROM json_each(?))",
                        (json.dumps(pks),),
                    ).rowcount
                )
            )
        )

    async def reclaim(self, table: str) -> None:
        """Nothing to do: the pages a pass freed are on the freelist, and the next writes take
        them (see this module's notes)."""

    async def prune_preview(
        self, bodies_before: float, tasks_before: float | None, files_before: float | None
    ) -> dict[str, int]:
        counts: dict[str, int] = {}
        for table, sql, params in preview_counts(lambda n: "?", bodies_before, tasks_before, files_before):
            found = await self._fetchall(sql, params)
            counts[table] = counts.get(table, 0) + int(found[0][0])
        return counts
