"""SQLite: result files to keep (captures), claimed with a lease like polls."""

from __future__ import annotations

import sqlite3

from receiver.rules.records import CaptureOutcome, CaptureRow
from store import rows
from store.sqlite.base import SQLiteBase

__all__ = ["CaptureStore"]


class CaptureStore(SQLiteBase):
    async def claim_captures(self, now: float, limit: int, lease: float) -> list[CaptureRow]:
        """Take up to `limit` due captures: their due time moves to now + lease, so nobody else
        takes them meanwhile, and a worker that dies leaves them due again when it runs out."""

        def unit(conn: sqlite3.Connection) -> list[CaptureRow]:
            found = conn.execute(
                "SELECT * FROM captures WHERE status = 'pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE captures SET next_attempt_at = ? WHERE pk = ?",
                [(now + lease, r["pk"]) for r in found],
            )
            return [rows.capture(r) for r in found]

        return await self._write(unit)

    async def renew_capture(self, pk: int, until: float) -> None:
        await self._write(
            lambda conn: conn.execute(
                "UPDATE captures SET next_attempt_at = ? WHERE pk = ? AND status = 'pending'", (until, pk)
            )
        )

    async def finish_capture(self, outcome: CaptureOutcome) -> None:
        o = outcome
        settled = o.at if o.status != "pending" else None
        await self._write(
            lambda conn: conn.execute(
                "UPDATE captures SET status = ?, attempts = attempts + 1, next_attempt_at = ?,"
                " settled_at = ?, size = ?, sha256 = ?, content_type = ?, key = ?, error = ?"
                " WHERE pk = ? AND status = 'pending'",
                (
                    o.status,
                    o.next_attempt_at,
                    settled,
                    o.size,
                    o.sha256,
                    o.content_type,
                    o.key,
                    o.error,
                    o.pk,
                ),
            )
        )

    async def next_capture_due(self) -> float | None:
        found = await self._fetchall(
            "SELECT min(next_attempt_at) AS due FROM captures WHERE status = 'pending'"
        )
        due = found[0]["due"] if found else None
        return float(due) if due is not None else None

    async def captures_of(self, task_pks: list[int]) -> dict[int, list[CaptureRow]]:
        result: dict[int, list[CaptureRow]] = {pk: [] for pk in task_pks}
        if not task_pks:
            return result
        marks = ",".join("?" * len(task_pks))
        found = await self._fetchall(
            f"SELECT * FROM captures WHERE task_pk IN ({marks}) ORDER BY task_pk, variant", tuple(task_pks)
        )
        for row in found:
            result[row["task_pk"]].append(rows.capture(row))
        return result

    async def capture_stats(self) -> dict[str, int]:
        found = await self._counts("captures")
        return {status: n for (status, _), n in rows.counted(found).items()}
