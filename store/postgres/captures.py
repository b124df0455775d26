"""PostgreSQL: result files to keep (captures), claimed with a lease like polls, across processes."""

from __future__ import annotations

from receiver.rules.records import CaptureOutcome, CaptureRow
from store import rows
from store.postgres.base import PostgresBase

__all__ = ["CaptureStore"]


class CaptureStore(PostgresBase):
    async def claim_captures(self, now: float, limit: int, lease: float) -> list[CaptureRow]:
        """The lease is written into next_attempt_at, so claimed rows leave the due range and other
        processes skip the locked ones; a process that dies leaves them due when it runs out."""
        async with self._tx() as conn:
            found = await conn.fetch(
                "WITH due AS (SELECT pk FROM captures WHERE status = 'pending' AND next_attempt_at <= $1"
                " ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
                " UPDATE captures c SET next_attempt_at = $3 FROM due WHERE c.pk = due.pk RETURNING c.*",
                now,
                limit,
                now + lease,
            )
        return [rows.capture(r) for r in found]

    async def renew_capture(self, pk: int, until: float) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE captures SET next_attempt_at = $1 WHERE pk = $2 AND status = 'pending'", until, pk
            )

    async def finish_capture(self, outcome: CaptureOutcome) -> None:
        o = outcome
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE captures SET status = $1, attempts = attempts + 1, next_attempt_at = $2,"
                " settled_at = $3, size = $4, sha256 = $5, content_type = $6, key = $7, error = $8"
                " WHERE pk = $9 AND status = 'pending'",
                o.status,
                o.next_attempt_at,
                o.at if o.status != "pending" else None,
                o.size,
                o.sha256,
                o.content_type,
                o.key,
                o.error,
                o.pk,
            )

    async def next_capture_due(self) -> float | None:
        found = await self._fetch("SELECT min(next_attempt_at) AS due FROM captures WHERE status = 'pending'")
        due = found[0]["due"] if found else None
        return float(due) if due is not None else None

    async def captures_of(self, task_pks: list[int]) -> dict[int, list[CaptureRow]]:
        result: dict[int, list[CaptureRow]] = {pk: [] for pk in task_pks}
        if task_pks:
            found = await self._fetch(
                "SELECT * FROM captures WHERE task_pk = ANY($1::bigint[]) ORDER BY task_pk, variant", task_pks
            )
            for row in found:
                result[row["task_pk"]].append(rows.capture(row))
        return result

    async def capture_stats(self) -> dict[str, int]:
        found = await self._counts("captures")
        return {status: n for (status, _), n in rows.counted(found).items()}
