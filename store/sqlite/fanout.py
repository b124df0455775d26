"""SQLite: subscriptions, events, the transactional outbox, attempts and replays."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from receiver.errors import OverLimit, UnknownCursor
from receiver.rules import decide
from receiver.rules.ids import new_id
from receiver.rules.records import (
    Attempt,
    AttemptRow,
    EventRow,
    OutboxJob,
    OutboxRow,
    OutboxStats,
    Page,
    ReplayFilter,
    SubscriptionRow,
)
from store import rows
from store.sql import OWN_OR_GLOBAL
from store.sqlite.base import SQLiteBase
from store.sqlite.deliveries import SUBSCRIBED

__all__ = ["DUE_SENDS", "NEXT_DUE", "FanoutStore"]

# The claims' scan, earliest due first, through outbox_ready: that index holds no paused
# subscriber's send (held), so a paused backlog, however large, is never walked. The scan is a
# subquery with its own LIMIT so that no plan can start from the subscriptions instead (one
# that does walks every due send of every active subscriber: seconds, on a PostgreSQL whose
# statistics lag behind a burst). The join still checks the subscriber, for a send queued while
# its subscriber was being paused.
DUE_SENDS = (
    "SELECT o.pk AS opk, o.subscription_pk AS spk FROM (SELECT pk, subscription_pk, next_attempt_at"
    " FROM outbox WHERE status = 'pending' AND held = 0 AND next_attempt_at <= ?"
    " AND subscription_pk NOT IN ({full}) ORDER BY next_attempt_at LIMIT ?) AS o"
    " JOIN subscriptions s ON s.pk = o.subscription_pk WHERE s.status = 'active' ORDER BY o.next_attempt_at"
)
# The dispatcher's next wake-up: the earliest of the first sends in that index whose subscriber
# is active. None when all of them are strays (see above): the dispatcher then looks again soon.
NEXT_DUE = (
    "SELECT min(o.next_attempt_at) AS due FROM (SELECT subscription_pk, next_attempt_at FROM outbox"
    " WHERE status = 'pending' AND held = 0 ORDER BY next_attempt_at LIMIT 100) AS o"
    " JOIN subscriptions s ON s.pk = o.subscription_pk WHERE s.status = 'active'"
)


class FanoutStore(SQLiteBase):
    async def create_subscription(
        self, url: str, events: list[str] | None, secret: str, now: float, *, limit: int | None = None
    ) -> SubscriptionRow:
        def unit(conn: sqlite3.Connection) -> SubscriptionRow:
            if limit is not None:
                # The writer's transaction holds the write lock: no other create can slip past.
                counted = conn.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM subscriptions"
                    " WHERE task_pk IS NULL AND status != 'deleted' LIMIT ?)",
                    (limit + 1,),
                ).fetchone()[0]
                if counted >= limit:
                    raise OverLimit(counted, limit)
            cursor = conn.execute(
                "INSERT INTO subscriptions (id, url, events, secret, status, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, 'active', ?, ?)",
                (
                    new_id("subscription"),
                    url,
                    json.dumps(events) if events is not None else None,
                    secret,
                    now,
                    now,
                ),
            )
            return rows.subscription(
                conn.execute("SELECT * FROM subscriptions WHERE pk = ?", (cursor.lastrowid,)).fetchone()
            )

        return await self._write(unit)

    async def get_subscription(self, subscription_id: str) -> SubscriptionRow | None:
        found = await self._fetchall(
            "SELECT * FROM subscriptions WHERE id = ? AND status != 'deleted'", (subscription_id,)
        )
        return rows.subscription(found[0]) if found else None

    async def list_subscriptions(self, limit: int, after: str | None) -> Page:
        where: list[str] = ["task_pk IS NULL", "status != 'deleted'"]
        params: list[Any] = []
        if after is not None:
            where.append("pk < ?")
            params.append(await self._cursor("subscriptions", "id", after))
        return await self._page("SELECT * FROM subscriptions", "pk", where, params, limit, rows.subscription)

    async def subscription_secrets(self, after_pk: int, limit: int) -> list[tuple[int, str, str]]:
        def unit(conn: sqlite3.Connection) -> list[tuple[int, str, str]]:
            found = conn.execute(
                "SELECT pk, url, secret FROM subscriptions"
                " WHERE task_pk IS NULL AND pk > ? ORDER BY pk LIMIT ?",
                (after_pk, limit),
            ).fetchall()
            return [(int(r["pk"]), str(r["url"]), str(r["secret"])) for r in found]

        return await self._write(unit)

    async def set_subscription_secrets(self, changes: list[tuple[int, str, str]]) -> None:
        def unit(conn: sqlite3.Connection) -> None:
            # Overwritten cells are zeroed, not left in free space for a reader of the file.
            conn.execute("PRAGMA secure_delete = ON")
            conn.executemany(
                "UPDATE subscriptions SET url = ?, secret = ? WHERE pk = ?",
                [(url, secret, pk) for pk, url, secret in changes],
            )

        await self._write(unit)
        # The WAL still holds the pages as they were: fold it into the file and empty it.
        await self._fetchall("PRAGMA wal_checkpoint(TRUNCATE)")

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
                    "UPDATE outbox SET status = 'cancelled', next_attempt_at = NULL, leased_until = NULL,"
                    " settled_at = ?"
                    " WHERE subscription_pk = ? AND status = 'pending'",
                    (now, row["pk"]),
                )
            elif status in ("paused", "active"):
                # Held sends leave the claims' index (outbox_ready): claims never walk a paused
                # subscriber's backlog, however large.
                conn.execute(
                    "UPDATE outbox SET held = ?"
                    " WHERE subscription_pk = ? AND status = 'pending' AND held != ?",
                    (status == "paused", row["pk"], status == "paused"),
                )
            return rows.subscription(
                conn.execute("SELECT * FROM subscriptions WHERE pk = ?", (row["pk"],)).fetchone()
            )

        return await self._write(unit)

    async def claim_outbox(
        self,
        now: float,
        limit: int,
        caps: Mapping[int, int],
        default_cap: int,
        lease: float,
        *,
        settle: Sequence[Attempt] = (),
    ) -> list[OutboxJob]:
        """Take due sends, at most its cap (`caps`, else `default_cap`) in flight per subscriber,
        counted in the store (leased_until), so that one slow or dead subscriber never holds the
        others' places. The attempts in `settle` are recorded first, in the same transaction."""

        def unit(conn: sqlite3.Connection) -> list[OutboxJob]:
            _record(conn, settle)
            if limit <= 0:
                return []
            in_flight = {
                r["spk"]: r["n"]
                for r in conn.execute(
                    "SELECT subscription_pk AS spk, count(*) AS n FROM outbox"
                    " WHERE status = 'pending' AND leased_until > ? GROUP BY subscription_pk",
                    (now,),
                )
            }
            full = [pk for pk, n in in_flight.items() if n >= caps.get(pk, default_cap)]
            # The earliest due sends, skipping subscribers already at their cap; a window a few
            # times the room, so one subscriber's backlog costs the others one round at most.
            found = conn.execute(
                DUE_SENDS.format(full=",".join("?" * len(full))), (now, *full, limit * 4)
            ).fetchall()
            due = [(row["opk"], row["spk"]) for row in found]
            taken = decide.pick_sends(due, in_flight, caps, default_cap, limit)
            if not taken:
                return []
            marks = ",".join("?" * len(taken))
            conn.execute(
                f"UPDATE outbox SET next_attempt_at = ?, leased_until = ? WHERE pk IN ({marks})",
                (now + lease, now + lease, *taken),
            )
            joined = conn.execute(
                "SELECT o.pk AS opk, o.attempts AS oattempts, e.*, s.pk AS s_pk, s.id AS s_id,"
                " s.url AS s_url, s.events AS s_events, s.secret AS s_secret, s.status AS s_status,"
                " s.task_pk AS s_task_pk FROM outbox o JOIN events e ON e.pk = o.event_pk"
                f" JOIN subscriptions s ON s.pk = o.subscription_pk WHERE o.pk IN ({marks})",
                taken,
            ).fetchall()
            return [rows.outbox_job(r) for r in joined]

        if not settle and limit <= 0:
            return []
        # Not durable: lost to a crash of the machine, a claim or an attempt only sends again.
        return await self._write(unit, durable=False)

    async def record_attempt(self, attempt: Attempt) -> None:
        await self._write(lambda conn: _record(conn, (attempt,)))

    async def next_outbox_due(self) -> float | None:
        found = await self._fetchall(NEXT_DUE)
        due = found[0]["due"] if found else None
        return float(due) if due is not None else None

    async def queue_replay(
        self, selection: ReplayFilter, now: float, replay_id: str, *, max_sends: int | None = None
    ) -> tuple[int, int]:
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
            if sel.subscription_id is not None:
                match = f"s.id = ? AND {OWN_OR_GLOBAL}"
                match_params: list[Any] = [sel.subscription_id]
            else:
                match = SUBSCRIBED  # every subscription the event matches now
                match_params = []
            pairs = (
                f"FROM events e JOIN subscriptions s ON {match}"
                f" WHERE s.status IN ('active', 'paused') AND {clause}"
            )
            if max_sends is not None:
                # Counted only as far as the cap: a replay of everything costs max_sends + 1 rows
                # here, never the whole history. The writer's lock keeps it true until the insert.
                counted = conn.execute(
                    f"SELECT count(*) FROM (SELECT 1 {pairs} LIMIT ?)",
                    (*match_params, *params, max_sends + 1),
                ).fetchone()[0]
                if counted > max_sends:
                    raise OverLimit(counted, max_sends)
            selected = conn.execute(f"SELECT count(*) FROM events e WHERE {clause}", params).fetchone()[0]
            # A paused subscriber's sends are held: out of the claims' index until it resumes.
            cursor = conn.execute(
                "INSERT INTO outbox (event_pk, subscription_pk, replay_id, status, next_attempt_at,"
                f" created_at, held) SELECT e.pk, s.pk, ?, 'pending', ?, ?, s.status = 'paused' {pairs}"
                " ORDER BY e.pk",
                (replay_id, now, now, *match_params, *params),
            )
            return selected, cursor.rowcount

        return await self._write(unit)

    async def replay_progress(self, replay_id: str) -> dict[str, int]:
        found = await self._fetchall(
            "SELECT status, count(*) AS n FROM outbox WHERE replay_id = ? GROUP BY status", (replay_id,)
        )
        return {r["status"]: r["n"] for r in found}

    async def replay_failures(self, replay_id: str) -> tuple[int, str | None]:
        retrying = await self._fetchall(
            "SELECT count(*) AS n FROM outbox WHERE replay_id = ? AND status = 'pending' AND attempts > 0",
            (replay_id,),
        )
        latest = await self._fetchall(
            "SELECT a.status, a.error FROM attempts a JOIN outbox o ON o.pk = a.outbox_pk"
            " WHERE o.replay_id = ? AND (a.error IS NOT NULL OR a.status < 200 OR a.status > 299)"
            " ORDER BY a.at DESC LIMIT 1",
            (replay_id,),
        )
        error = None
        if latest:
            error = latest[0]["error"] or f"answered {latest[0]['status']}"
        return retrying[0]["n"], error

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
        return await self._page("SELECT * FROM events", "pk", where, params, limit, rows.event)

    async def get_event(self, event_id: str) -> EventRow | None:
        found = await self._fetchall("SELECT * FROM events WHERE id = ?", (event_id,))
        return rows.event(found[0]) if found else None

    async def event_sends(self, event_pk: int) -> list[OutboxRow]:
        found = await self._fetchall(rows.OUTBOX_SELECT + " WHERE o.event_pk = ? ORDER BY o.pk", (event_pk,))
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
        return [rows.outbox(r, log.get(r["pk"], [])) for r in found]

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
        return await self._page(
            rows.OUTBOX_SELECT, "o.pk", where, params, limit, lambda r: rows.outbox(r, [])
        )

    async def events_after(self, event_id: str | None, limit: int) -> list[EventRow]:
        after = 0
        if event_id is not None:
            found = await self._fetchall("SELECT pk FROM events WHERE id = ?", (event_id,))
            if not found:
                raise UnknownCursor(event_id)
            after = found[0]["pk"]
        found = await self._fetchall("SELECT * FROM events WHERE pk > ? ORDER BY pk LIMIT ?", (after, limit))
        return [rows.event(r) for r in found]

    async def recent_sends(
        self, subscription_pks: list[int], first_event_pk: int, limit: int
    ) -> dict[int, list[OutboxRow]]:
        found: list[Any] = []
        for pk in subscription_pks:
            found += await self._fetchall(
                rows.OUTBOX_SELECT + " WHERE o.subscription_pk = ? AND o.event_pk >= ?"
                " ORDER BY o.event_pk DESC, o.pk DESC LIMIT ?",
                (pk, first_event_pk, limit),
            )
        log = await self._attempts([r["pk"] for r in found])
        sends: dict[int, list[OutboxRow]] = {pk: [] for pk in subscription_pks}
        for r in found:
            sends[r["subscription_pk"]].append(rows.outbox(r, log.get(r["pk"], [])))
        return sends

    async def _attempts(self, outbox_pks: list[int]) -> dict[int, list[AttemptRow]]:
        log: dict[int, list[AttemptRow]] = {}
        for start in range(0, len(outbox_pks), 500):  # under SQLite's limit of bound values
            chunk = outbox_pks[start : start + 500]
            for a in await self._fetchall(
                f"SELECT * FROM attempts WHERE outbox_pk IN ({','.join('?' * len(chunk))}) ORDER BY pk",
                tuple(chunk),
            ):
                log.setdefault(a["outbox_pk"], []).append(
                    AttemptRow(a["at"], a["status"], a["latency_ms"], a["error"])
                )
        return log

    async def dead_letter_counts(self, subscription_pks: list[int], limit: int) -> dict[int, int]:
        counts: dict[int, int] = {}
        for pk in subscription_pks:
            found = await self._fetchall(
                "SELECT count(*) AS n FROM (SELECT 1 FROM outbox WHERE subscription_pk = ?"
                " AND status = 'dead' LIMIT ?)",
                (pk, limit + 1),
            )
            counts[pk] = int(found[0]["n"])
        return counts

    async def outbox_stats(self) -> OutboxStats:
        found = await self._counts("outbox")
        return OutboxStats({status: n for (status, _), n in rows.counted(found).items()})


def _record(conn: sqlite3.Connection, attempts: Sequence[Attempt]) -> None:
    """Record attempts: each one's row, and its send's new state (a send no longer pending, say
    cancelled meanwhile, keeps its state); a 410 disables its subscriber and cancels the rest."""
    if not attempts:
        return
    conn.executemany(
        "INSERT INTO attempts (outbox_pk, at, status, latency_ms, error) VALUES (?, ?, ?, ?, ?)",
        [(a.outbox_pk, a.at, a.status, a.latency_ms, a.error) for a in attempts],
    )
    settled = []
    for a in attempts:
        status = {"retry": "pending"}.get(a.outcome, a.outcome)
        pending = status == "pending"
        settled.append(
            (
                status,
                a.next_attempt_at if pending else None,
                None if pending else a.at,
                a.status,
                a.error,
                a.outbox_pk,
            )
        )
    conn.executemany(
        "UPDATE outbox SET attempts = attempts + 1, status = ?, next_attempt_at = ?,"
        " leased_until = NULL, settled_at = ?, last_status = ?, last_error = ?"
        " WHERE pk = ? AND status = 'pending'",
        settled,
    )
    for a in attempts:
        if a.disables_subscription is None:
            continue
        row = conn.execute("SELECT subscription_pk FROM outbox WHERE pk = ?", (a.outbox_pk,)).fetchone()
        conn.execute(
            "UPDATE subscriptions SET status = 'disabled', disabled_reason = ?, updated_at = ? WHERE pk = ?",
            (a.disables_subscription, a.at, row["subscription_pk"]),
        )
        conn.execute(
            "UPDATE outbox SET status = 'cancelled', next_attempt_at = NULL, leased_until = NULL,"
            " settled_at = ?"
            " WHERE subscription_pk = ? AND status = 'pending'",
            (a.at, row["subscription_pk"]),
        )
