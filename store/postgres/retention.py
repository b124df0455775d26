"""PostgreSQL: retention's statements, one short transaction per batch. The tasks a batch prunes
are locked (skipping any another session holds), so the ack path's writer, which checks each
task row's version when it writes, decides again rather than naming a deleted task."""

from __future__ import annotations

import json

import asyncpg

from receiver.rules.records import CaptureRow, PruneRun
from store import rows
from store.postgres.base import ACQUIRE_TIMEOUT, PostgresBase, guard
from store.preview import preview_counts

__all__ = ["RetentionStore"]

_EVENTS_OF = "SELECT pk FROM events WHERE task_pk = ANY($1::bigint[])"
# The tables reclaim() vacuums: those a pass deletes from or rewrites, and the appended count
# changes its deletes make (folded away by the sweeper).
_RECLAIMED = frozenset(
    ("attempts", "outbox", "events", "deliveries", "captures", "subscriptions", "tasks", "count_changes")
)


async def _fan_out_of(conn: asyncpg.Connection, pks: list[int]) -> dict[str, int]:
    """Delete the events of tasks `pks` with their sends and attempts."""
    attempts = await conn.fetchval(
        "WITH gone AS (DELETE FROM attempts WHERE outbox_pk IN (SELECT pk FROM outbox WHERE event_pk IN"
        f" ({_EVENTS_OF})) RETURNING 1) SELECT count(*) FROM gone",
        pks,
    )
    outbox = await conn.fetchval(
        f"WITH gone AS (DELETE FROM outbox WHERE event_pk IN ({_EVENTS_OF}) RETURNING 1)"
        " SELECT count(*) FROM gone",
        pks,
    )
    events = await conn.fetchval(
        "WITH gone AS (DELETE FROM events WHERE task_pk = ANY($1::bigint[]) RETURNING 1)"
        " SELECT count(*) FROM gone",
        pks,
    )
    return {"attempts": int(attempts), "outbox": int(outbox), "events": int(events)}


def _count(status: str) -> int:
    """asyncpg's command status ("UPDATE 3", "DELETE 0"): the rows it touched."""
    return int(status.rsplit(" ", 1)[-1])


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for table, n in counts.items():
        if n:
            into[table] = into.get(table, 0) + n


class RetentionStore(PostgresBase):
    async def take_lease(self, name: str, holder: str, now: float, until: float) -> bool:
        async with self._tx() as conn:
            status = await conn.execute(
                "UPDATE leases SET holder = $1, until = $2 WHERE name = $3 AND (holder = $1 OR until <= $4)",
                holder,
                until,
                name,
                now,
            )
        return _count(status) == 1

    async def release_lease(self, name: str, holder: str, run: PruneRun | None = None) -> None:
        async with self._tx() as conn:
            if run is not None:
                await conn.execute(
                    "UPDATE leases SET last_at = $1, last_took = $2, last_counts = $3"
                    " WHERE name = $4 AND holder = $5",
                    run.at,
                    run.took,
                    json.dumps(run.counts, sort_keys=True),
                    name,
                    holder,
                )
            await conn.execute(
                "UPDATE leases SET holder = NULL, until = 0 WHERE name = $1 AND holder = $2", name, holder
            )

    async def last_prune(self) -> PruneRun:
        found = await self._fetch("SELECT last_at, last_took, last_counts FROM leases WHERE name = 'prune'")
        if not found or found[0]["last_at"] is None:
            return PruneRun()
        row = found[0]
        return PruneRun(row["last_at"], row["last_took"], json.loads(row["last_counts"] or "{}"))

    async def prune_bodies(self, ended_before: float, now: float, limit: int) -> tuple[dict[str, int], bool]:
        async with self._tx() as conn:
            pks = [
                r["pk"]
                for r in await conn.fetch(
                    "SELECT pk FROM tasks WHERE terminal_at < $1 AND pruned_at IS NULL"
                    " ORDER BY terminal_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                    ended_before,
                    limit,
                )
            ]
            counts: dict[str, int] = {}
            if pks:
                _add(counts, await _fan_out_of(conn, pks))
                bodies = await conn.execute(
                    "UPDATE deliveries SET body = ''::bytea, headers = '{}', pruned_at = $1"
                    " WHERE task_pk = ANY($2::bigint[]) AND pruned_at IS NULL",
                    now,
                    pks,
                )
                _add(counts, {"delivery_bodies": _count(bodies)})
                await conn.execute("UPDATE tasks SET pruned_at = $1 WHERE pk = ANY($2::bigint[])", now, pks)
            taskless = _count(
                await conn.execute(
                    "UPDATE deliveries SET body = ''::bytea, headers = '{}', pruned_at = $1 WHERE pk IN"
                    " (SELECT pk FROM deliveries WHERE task_pk IS NULL AND pruned_at IS NULL"
                    " AND received_at < $2 LIMIT $3 FOR UPDATE SKIP LOCKED)",
                    now,
                    ended_before,
                    limit,
                )
            )
            _add(counts, {"delivery_bodies": taskless})
        return counts, len(pks) == limit or taskless == limit

    async def prune_tasks(self, ended_before: float, limit: int) -> tuple[dict[str, int], bool]:
        async with self._tx() as conn:
            pks = [
                r["pk"]
                for r in await conn.fetch(
                    "SELECT pk FROM tasks WHERE terminal_at < $1 ORDER BY terminal_at LIMIT $2"
                    " FOR UPDATE SKIP LOCKED",
                    ended_before,
                    limit,
                )
            ]
            counts: dict[str, int] = {}
            if pks:
                _add(counts, await _fan_out_of(conn, pks))
                for table, column in (
                    ("deliveries", "task_pk"),
                    ("captures", "task_pk"),
                    # A task's own callback_url subscription (its sends went with its events).
                    ("subscriptions", "task_pk"),
                    ("tasks", "pk"),
                ):
                    sql = f"DELETE FROM {table} WHERE {column} = ANY($1::bigint[])"
                    _add(counts, {table: _count(await conn.execute(sql, pks))})
            taskless = _count(
                await conn.execute(
                    "DELETE FROM deliveries WHERE pk IN (SELECT pk FROM deliveries"
                    " WHERE task_pk IS NULL AND received_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                    ended_before,
                    limit,
                )
            )
            _add(counts, {"deliveries": taskless})
        return counts, len(pks) == limit or taskless == limit

    async def expiring_files(
        self, kept_before: float | None, ended_before: float | None, limit: int
    ) -> list[CaptureRow]:
        found: list[asyncpg.Record] = []
        if kept_before is not None:
            found += await self._fetch(
                "SELECT * FROM captures WHERE status = 'kept' AND settled_at < $1"
                " ORDER BY settled_at LIMIT $2",
                kept_before,
                limit,
            )
        if ended_before is not None and len(found) < limit:
            found += await self._fetch(
                "SELECT c.* FROM tasks t JOIN captures c ON c.task_pk = t.pk"
                " WHERE t.terminal_at < $1 AND c.status = 'kept' ORDER BY t.terminal_at LIMIT $2",
                ended_before,
                limit - len(found),
            )
        unique = {r["pk"]: rows.capture(r) for r in found}
        return list(unique.values())

    async def expire_files(self, pks: list[int]) -> int:
        if not pks:
            return 0
        async with self._tx() as conn:
            status = await conn.execute(
                "UPDATE captures SET status = 'expired', key = NULL"
                " WHERE status = 'kept' AND pk = ANY($1::bigint[])",
                pks,
            )
        return _count(status)

    async def reclaim(self, table: str) -> None:
        """A plain VACUUM of `table`, so the next writes reuse the space of the rows a pass deleted
        even where the server's autovacuum is off or behind (migration 7's per-table thresholds
        only matter where it runs). Its lock (SHARE UPDATE EXCLUSIVE) lets every read and write
        go on; it runs on a connection of its own (VACUUM cannot run in a transaction, and it must
        not hold one of the pool's, which the ack path uses), with no statement timeout: a large
        table's vacuum may take longer than any one query should."""
        if table not in _RECLAIMED:
            raise ValueError(f"not a table a pass prunes: {table!r}")
        async with guard():
            conn = await asyncpg.connect(self._url, timeout=ACQUIRE_TIMEOUT)
            try:
                await conn.execute(f"VACUUM {table}")
            finally:
                await conn.close()

    async def prune_preview(
        self, bodies_before: float, tasks_before: float | None, files_before: float | None
    ) -> dict[str, int]:
        counts: dict[str, int] = {}
        for table, sql, params in preview_counts(
            lambda n: f"${n}", bodies_before, tasks_before, files_before
        ):
            found = await self._fetch(sql, *params)
            counts[table] = counts.get(table, 0) + int(found[0][0])
        return counts
