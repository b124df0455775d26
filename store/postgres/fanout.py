"""PostgreSQL: subscriptions, events, the transactional outbox, attempts and replays.

Sends are claimed with a lease written into next_attempt_at (the row leaves the due range) and
into leased_until, which is what makes the per-subscriber limit hold for the fleet: the sends
in flight are counted in the database, under one advisory lock that orders claims."""

from __future__ import annotations

import json
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
from store.postgres.base import CHANNEL, VISIBLE, PostgresBase
from store.postgres.changes import SUBSCRIBED
from store.sql import OWN_OR_GLOBAL

__all__ = ["DUE_SENDS", "NEXT_DUE", "FanoutStore"]

_CLAIM_LOCK = 0x6F7574626F78  # "outbox": claims take turns, so fleet-wide counts stay true
_SUBSCRIBE_LOCK = 0x737562736372  # "subscr": creates take turns, so the cap holds for the fleet

# The claims' scan, earliest due first, through outbox_ready: that index holds no paused
# subscriber's send (held), so a paused backlog, however large, is never walked. The scan is a
# subquery with its own LIMIT so that no plan can start from the subscriptions instead (one
# that does walks every due send of every active subscriber: seconds, on a PostgreSQL whose
# statistics lag behind a burst). The join still checks the subscriber, for a send queued while
# its subscriber was being paused.
DUE_SENDS = (
    "SELECT o.pk AS opk, o.subscription_pk AS spk FROM (SELECT pk, subscription_pk, next_attempt_at"
    " FROM outbox WHERE status = 'pending' AND NOT held AND next_attempt_at <= $1"
    " AND subscription_pk <> ALL($2::bigint[]) ORDER BY next_attempt_at LIMIT $3) AS o"
    " JOIN subscriptions s ON s.pk = o.subscription_pk WHERE s.status = 'active' ORDER BY o.next_attempt_at"
)
# The dispatcher's next wake-up: the earliest of the first sends in that index whose subscriber
# is active. None when all of them are strays (see above): the dispatcher then looks again soon.
NEXT_DUE = (
    "SELECT min(o.next_attempt_at) AS due FROM (SELECT subscription_pk, next_attempt_at FROM outbox"
    " WHERE status = 'pending' AND NOT held ORDER BY next_attempt_at LIMIT 100) AS o"
    " JOIN subscriptions s ON s.pk = o.subscription_pk WHERE s.status = 'active'"
)


class FanoutStore(PostgresBase):
    async def create_subscription(
        self, url: str, events: list[str] | None, secret: str, now: float, *, limit: int | None = None
    ) -> SubscriptionRow:
        async with self._tx() as conn:
            if limit is not None:
                # Two processes counting at once under READ COMMITTED would both see room.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SUBSCRIBE_LOCK)
                counted = await conn.fetchval(
                    "SELECT count(*) FROM (SELECT 1 FROM subscriptions"
                    " WHERE task_pk IS NULL AND status <> 'deleted' LIMIT $1) AS listed",
                    limit + 1,
                )
                if counted >= limit:
                    raise OverLimit(int(counted), limit)
            row = await conn.fetchrow(
                "INSERT INTO subscriptions (id, url, events, secret, status, created_at, updated_at)"
                " VALUES ($1, $2, $3::jsonb, $4, 'active', $5, $5) RETURNING *",
                new_id("subscription"),
                url,
                json.dumps(events) if events is not None else None,
                secret,
                now,
            )
        return rows.subscription(row)

    async def get_subscription(self, subscription_id: str) -> SubscriptionRow | None:
        found = await self._fetch(
            "SELECT * FROM subscriptions WHERE id = $1 AND status != 'deleted'", subscription_id
        )
        return rows.subscription(found[0]) if found else None

    async def list_subscriptions(self, limit: int, after: str | None) -> Page:
        where = ["task_pk IS NULL", "status != 'deleted'"]
        args: list[Any] = []
        if after is not None:
            found = await self._fetch("SELECT pk FROM subscriptions WHERE id = $1", after)
            if not found:
                raise UnknownCursor(after)
            args.append(found[0]["pk"])
            where.append("pk < $1")
        return await self._page(
            "SELECT * FROM subscriptions", "pk DESC", where, args, limit, rows.subscription
        )

    async def subscription_secrets(self, after_pk: int, limit: int) -> list[tuple[int, str, str]]:
        async with self._tx() as conn:
            found = await conn.fetch(
                "SELECT pk, url, secret FROM subscriptions WHERE task_pk IS NULL AND pk > $1"
                " ORDER BY pk LIMIT $2",
                after_pk,
                limit,
            )
        return [(int(r["pk"]), str(r["url"]), str(r["secret"])) for r in found]

    async def set_subscription_secrets(self, changes: list[tuple[int, str, str]]) -> None:
        async with self._tx() as conn:
            await conn.executemany(
                "UPDATE subscriptions SET url = $2, secret = $3 WHERE pk = $1",
                [(pk, url, secret) for pk, url, secret in changes],
            )

    async def set_subscription_status(
        self, subscription_id: str, status: str, now: float, reason: str | None = None
    ) -> SubscriptionRow | None:
        async with self._tx() as conn:
            row = await conn.fetchrow(
                "UPDATE subscriptions SET status = $2, updated_at = $3, disabled_reason = $4"
                " WHERE id = $1 AND status != 'deleted' RETURNING *",
                subscription_id,
                status,
                now,
                reason,
            )
            if row is None:
                return None
            if status in ("deleted", "disabled"):
                await conn.execute(
                    "UPDATE outbox SET status = 'cancelled', next_attempt_at = NULL, leased_until = NULL,"
                    " settled_at = $1 WHERE subscription_pk = $2 AND status = 'pending'",
                    now,
                    row["pk"],
                )
            else:
                # Held sends leave the claims' index (outbox_ready): claims never walk a paused
                # subscriber's backlog, however large.
                await conn.execute(
                    "UPDATE outbox SET held = $2"
                    " WHERE subscription_pk = $1 AND status = 'pending' AND held <> $2",
                    row["pk"],
                    status == "paused",
                )
            if status == "active":
                await conn.execute("SELECT pg_notify($1, 'outbox')", CHANNEL)
        return rows.subscription(row)

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
        """Take due sends, at most its cap (`caps`, else `default_cap`) in flight per subscriber across every
        process: the database counts them (leased_until). The attempts in `settle` are recorded
        first, in the same transaction, under the claims' lock: a send whose lease ran out and
        that another process claims again is then never locked by both in opposite orders."""
        if not settle and limit <= 0:
            return []
        async with self._tx() as conn:
            if limit > 0:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _CLAIM_LOCK)
            await _record(conn, settle)
            if limit <= 0:
                return []
            in_flight = {
                r["spk"]: r["n"]
                for r in await conn.fetch(
                    "SELECT subscription_pk AS spk, count(*) AS n FROM outbox"
                    " WHERE status = 'pending' AND leased_until > $1 GROUP BY subscription_pk",
                    now,
                )
            }
            full = [pk for pk, n in in_flight.items() if n >= caps.get(pk, default_cap)]
            found = await conn.fetch(DUE_SENDS, now, full, limit * 4)
            due = [(r["opk"], r["spk"]) for r in found]
            taken = decide.pick_sends(due, in_flight, caps, default_cap, limit)
            if not taken:
                return []
            joined = await conn.fetch(
                "WITH claimed AS (UPDATE outbox SET next_attempt_at = $2, leased_until = $2"
                " WHERE pk = ANY($1::bigint[]) RETURNING pk, attempts, event_pk, subscription_pk)"
                " SELECT c.pk AS opk, c.attempts AS oattempts, e.*, s.pk AS s_pk, s.id AS s_id,"
                " s.url AS s_url, s.events AS s_events, s.secret AS s_secret, s.status AS s_status,"
                " s.task_pk AS s_task_pk FROM claimed c JOIN events e ON e.pk = c.event_pk"
                " JOIN subscriptions s ON s.pk = c.subscription_pk ORDER BY c.pk",
                taken,
                now + lease,
            )
        return [rows.outbox_job(r) for r in joined]

    async def record_attempt(self, attempt: Attempt) -> None:
        async with self._tx() as conn:
            await _record(conn, (attempt,))

    async def next_outbox_due(self) -> float | None:
        found = await self._fetch(NEXT_DUE)
        due = found[0]["due"] if found else None
        return float(due) if due is not None else None

    async def queue_replay(
        self, selection: ReplayFilter, now: float, replay_id: str, *, max_sends: int | None = None
    ) -> tuple[int, int]:
        """Queue the selected events again, under their own ids, to one subscriber or to every
        subscriber they match now. Returns (events selected, sends queued)."""
        sel = selection
        chosen = [
            (condition, value)
            for condition, value in (
                ("e.video_id = ${}", sel.video_id),
                ("e.created_at >= ${}", sel.since),
                ("e.created_at < ${}", sel.until),
                ("e.id = ANY(${}::text[])", sel.event_ids),
            )
            if value is not None
        ]
        filters = [value for _, value in chosen]

        def selecting(first: int) -> str:
            """The events' conditions, their arguments numbered from `first`."""
            return " AND ".join(c.format(n) for n, (c, _) in enumerate(chosen, start=first)) or "true"

        args: list[Any] = [replay_id, now, *filters]
        clause = selecting(3)
        if sel.subscription_id is not None:
            args.append(sel.subscription_id)
            match = f"s.id = ${len(args)} AND {OWN_OR_GLOBAL}"
        else:
            match = SUBSCRIBED  # every subscription the event matches now
        # One statement, one snapshot: the pairs counted are the pairs written, so a subscription
        # made meanwhile cannot slip past the cap. They are read only as far as the cap (a replay
        # of everything costs max_sends + 1 rows, never the whole history), and written only when
        # they fit.
        args.append(max_sends + 1 if max_sends is not None else None)
        cap = len(args)
        async with self._tx() as conn:
            counted = await conn.fetchrow(
                "WITH pairs AS (SELECT e.pk AS epk, s.pk AS spk, s.status = 'paused' AS held"
                f" FROM events e JOIN subscriptions s ON {match} WHERE s.status IN ('active', 'paused')"
                f" AND {clause} LIMIT ${cap}), queued AS (INSERT INTO outbox (event_pk, subscription_pk,"
                " replay_id, status, next_attempt_at, created_at, held)"
                " SELECT epk, spk, $1, 'pending', $2, $2, held FROM pairs"
                f" WHERE ${cap}::bigint IS NULL OR (SELECT count(*) FROM pairs) < ${cap}"
                " ORDER BY epk RETURNING 1)"
                " SELECT (SELECT count(*) FROM pairs) AS pairs, (SELECT count(*) FROM queued) AS queued",
                *args,
            )
            if max_sends is not None and counted["pairs"] > max_sends:
                raise OverLimit(int(counted["pairs"]), max_sends)
            # Only for the answer, and only once the replay fits.
            selected = await conn.fetchval(f"SELECT count(*) FROM events e WHERE {selecting(1)}", *filters)
            if counted["queued"]:
                await conn.execute("SELECT pg_notify($1, 'outbox')", CHANNEL)
        return int(selected), int(counted["queued"])

    async def replay_progress(self, replay_id: str) -> dict[str, int]:
        found = await self._fetch(
            "SELECT status, count(*) AS n FROM outbox WHERE replay_id = $1 GROUP BY status", replay_id
        )
        return {r["status"]: r["n"] for r in found}

    async def replay_failures(self, replay_id: str) -> tuple[int, str | None]:
        retrying = await self._fetch(
            "SELECT count(*) AS n FROM outbox WHERE replay_id = $1 AND status = 'pending' AND attempts > 0",
            replay_id,
        )
        latest = await self._fetch(
            "SELECT a.status, a.error FROM attempts a JOIN outbox o ON o.pk = a.outbox_pk"
            " WHERE o.replay_id = $1 AND (a.error IS NOT NULL OR a.status < 200 OR a.status > 299)"
            " ORDER BY a.at DESC LIMIT 1",
            replay_id,
        )
        error = None
        if latest:
            error = latest[0]["error"] or f"answered {latest[0]['status']}"
        return retrying[0]["n"], error

    async def list_events(
        self, video_id: str | None, event_type: str | None, limit: int, after: str | None
    ) -> Page:
        where = [VISIBLE.format(tx="tx")]
        args: list[Any] = []
        if after is not None:
            args += await self._position("events", "id", after)
            where.append(f"(tx, pk) < (${len(args) - 1}, ${len(args)})")
        for column, value in (("video_id", video_id), ("type", event_type)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        return await self._page("SELECT * FROM events", "tx DESC, pk DESC", where, args, limit, rows.event)

    async def get_event(self, event_id: str) -> EventRow | None:
        found = await self._fetch("SELECT * FROM events WHERE id = $1", event_id)
        return rows.event(found[0]) if found else None

    async def event_sends(self, event_pk: int) -> list[OutboxRow]:
        found = await self._fetch(rows.OUTBOX_SELECT + " WHERE o.event_pk = $1 ORDER BY o.pk", event_pk)
        attempts = await self._fetch(
            "SELECT a.* FROM attempts a JOIN outbox o ON o.pk = a.outbox_pk WHERE o.event_pk = $1"
            " ORDER BY a.pk",
            event_pk,
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
        where = ["o.status = $1"]
        args: list[Any] = [status]
        if subscription_id is not None:
            args.append(subscription_id)
            where.append(f"s.id = ${len(args)}")
        if after is not None:
            args.append(after)
            where.append(f"o.pk < ${len(args)}")
        return await self._page(
            rows.OUTBOX_SELECT, "o.pk DESC", where, args, limit, lambda r: rows.outbox(r, [])
        )

    async def events_after(self, event_id: str | None, limit: int) -> list[EventRow]:
        """Events in commit order after `event_id`: ordered by (writing transaction, pk) and
        read only below the oldest transaction still running, so an event that commits late
        is never skipped by a reader that has moved on."""
        tx, pk = (0, 0) if event_id is None else await self._position("events", "id", event_id)
        found = await self._fetch(
            f"SELECT * FROM events WHERE (tx, pk) > ($1, $2) AND {VISIBLE.format(tx='tx')}"
            " ORDER BY tx, pk LIMIT $3",
            tx,
            pk,
            limit,
        )
        return [rows.event(r) for r in found]

    async def recent_sends(
        self, subscription_pks: list[int], first_event_pk: int, limit: int
    ) -> dict[int, list[OutboxRow]]:
        found = await self._fetch(
            "SELECT x.* FROM unnest($1::bigint[]) AS sub(pk) CROSS JOIN LATERAL ("
            + rows.OUTBOX_SELECT
            + " WHERE o.subscription_pk = sub.pk AND o.event_pk >= $2"
            " ORDER BY o.event_pk DESC, o.pk DESC LIMIT $3) AS x",
            subscription_pks,
            first_event_pk,
            limit,
        )
        attempts = await self._fetch(
            "SELECT * FROM attempts WHERE outbox_pk = ANY($1::bigint[]) ORDER BY pk", [r["pk"] for r in found]
        )
        log: dict[int, list[AttemptRow]] = {}
        for a in attempts:
            log.setdefault(a["outbox_pk"], []).append(
                AttemptRow(a["at"], a["status"], a["latency_ms"], a["error"])
            )
        sends: dict[int, list[OutboxRow]] = {pk: [] for pk in subscription_pks}
        for r in found:
            sends[r["subscription_pk"]].append(rows.outbox(r, log.get(r["pk"], [])))
        return sends

    async def dead_letter_counts(self, subscription_pks: list[int], limit: int) -> dict[int, int]:
        found = await self._fetch(
            "SELECT sub.pk, (SELECT count(*) FROM (SELECT 1 FROM outbox o WHERE o.subscription_pk = sub.pk"
            " AND o.status = 'dead' LIMIT $2) AS d) AS n FROM unnest($1::bigint[]) AS sub(pk)",
            subscription_pks,
            limit + 1,
        )
        return {int(r["pk"]): int(r["n"]) for r in found}

    async def outbox_stats(self) -> OutboxStats:
        found = await self._counts("outbox")
        return OutboxStats({status: n for (status, _), n in rows.counted(found).items()})


async def _record(conn: Any, attempts: Sequence[Attempt]) -> None:
    """Record attempts, in two statements however many: each one's row, and its send's new state
    (a send no longer pending, say cancelled meanwhile, keeps its state); a 410 disables its
    subscriber and cancels the rest of its sends."""
    if not attempts:
        return
    await conn.execute(
        "INSERT INTO attempts (outbox_pk, at, status, latency_ms, error)"
        " SELECT * FROM unnest($1::bigint[], $2::float8[], $3::integer[], $4::float8[], $5::text[])",
        [a.outbox_pk for a in attempts],
        [a.at for a in attempts],
        [a.status for a in attempts],
        [a.latency_ms for a in attempts],
        [a.error for a in attempts],
    )
    states = [{"retry": "pending"}.get(a.outcome, a.outcome) for a in attempts]
    updated = await conn.fetch(
        "UPDATE outbox o SET attempts = o.attempts + 1, status = u.status, next_attempt_at = u.next,"
        " leased_until = NULL, settled_at = u.settled, last_status = u.last_status, last_error = u.last_error"
        " FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::float8[], $5::integer[], $6::text[])"
        " AS u(pk, status, next, settled, last_status, last_error)"
        " WHERE o.pk = u.pk AND o.status = 'pending' RETURNING o.pk, o.subscription_pk",
        [a.outbox_pk for a in attempts],
        states,
        [a.next_attempt_at if s == "pending" else None for a, s in zip(attempts, states, strict=True)],
        [None if s == "pending" else a.at for a, s in zip(attempts, states, strict=True)],
        [a.status for a in attempts],
        [a.error for a in attempts],
    )
    subscriber = {r["pk"]: r["subscription_pk"] for r in updated}
    for a in attempts:
        subscription_pk = subscriber.get(a.outbox_pk)
        if a.disables_subscription is None or subscription_pk is None:
            continue
        await conn.execute(
            "UPDATE subscriptions SET status = 'disabled', disabled_reason = $1, updated_at = $2"
            " WHERE pk = $3",
            a.disables_subscription,
            a.at,
            subscription_pk,
        )
        await conn.execute(
            "UPDATE outbox SET status = 'cancelled', next_attempt_at = NULL, leased_until = NULL,"
            " settled_at = $1 WHERE subscription_pk = $2 AND status = 'pending'",
            a.at,
            subscription_pk,
        )
