"""Rows to records, for every backend (sqlite3, aiosqlite and asyncpg rows all read by name)."""

from __future__ import annotations

import json
from typing import Any

import orjson

from receiver.rules.records import (
    AttemptRow,
    CaptureRow,
    DeliveryRow,
    EventRow,
    OutboxJob,
    OutboxRow,
    SubscriptionRow,
    TaskRow,
    dedupe_base,
)

# sqlite3.Row, aiosqlite.Row and asyncpg.Record: read by column name.
Row = Any

__all__ = [
    "LEAN",
    "OUTBOX_SELECT",
    "TASKS",
    "capture",
    "counted",
    "delivery",
    "event",
    "lean_task",
    "outbox",
    "outbox_job",
    "stored",
    "subscription",
    "task",
]

# Tasks as the API shows them: delivery counts derived from the deliveries rows.
TASKS = (
    "SELECT t.*, (SELECT count(*) + coalesce(sum(d.repeats), 0) FROM deliveries d"
    " WHERE d.video_id = t.video_id AND d.task_pk IS NOT NULL) AS deliveries,"
    " (SELECT coalesce(sum(d.repeats), 0) FROM deliveries d"
    " WHERE d.video_id = t.video_id AND d.task_pk IS NOT NULL) AS duplicates FROM tasks t"
)

# The columns a delivery's decision needs (see TaskRow): the ack path reads only these.
LEAN = "pk, video_id, status, video, created_at, next_poll_at, last_open_poll_at"


def lean_task(row: Row) -> TaskRow:
    return TaskRow(row[0], row[1], row[2], orjson.loads(row[3]), row[4], row[5], row[6])


def _derived(row: Row, name: str) -> int:
    """A count the API reads add (see TASKS); 0 where a write path read the bare row."""
    try:
        return int(row[name])
    except (IndexError, KeyError):
        return 0


def task(row: Row) -> TaskRow:
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
        token_hash=row["token_hash"],
    )


def event(row: Row) -> EventRow:
    return EventRow(
        pk=row["pk"],
        id=row["id"],
        task_pk=row["task_pk"],
        video_id=row["video_id"],
        type=row["type"],
        created_at=row["created_at"],
        data=json.loads(row["data"]),
    )


def delivery(row: Row) -> DeliveryRow:
    return DeliveryRow(
        pk=row["pk"],
        id=f"dlv_{row['pk']}",
        dedupe_key=dedupe_base(row["dedupe_key"]),
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
        pruned=row["pruned_at"] is not None,
    )


OUTBOX_SELECT = (
    "SELECT o.*, e.id AS event_id, e.video_id AS video_id, s.id AS subscription_id, s.url AS url"
    " FROM outbox o JOIN events e ON e.pk = o.event_pk JOIN subscriptions s ON s.pk = o.subscription_pk"
)


def outbox(row: Row, log: list[AttemptRow]) -> OutboxRow:
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
        leased_until=row["leased_until"],
    )


def subscription(row: Row) -> SubscriptionRow:
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


def outbox_job(row: Row) -> OutboxJob:
    """A claimed send, from a claim's join (its s_* columns are the subscription's)."""
    return OutboxJob(
        pk=row["opk"],
        attempts=row["oattempts"],
        event=event(row),
        subscription=SubscriptionRow(
            pk=row["s_pk"],
            id=row["s_id"],
            url=row["s_url"],
            events=json.loads(row["s_events"]) if row["s_events"] else None,
            secret=row["s_secret"],
            status=row["s_status"],
            task_pk=row["s_task_pk"],
        ),
    )


def counted(rows: list[Row]) -> dict[tuple[str, str | None], int]:
    """Kept counts (status, resolved_by, n) by (status, resolved_by): '' is kept for "resolved by
    nothing" (a key column cannot be NULL), and a count back at 0 is left out, as a GROUP BY would."""
    return {(r["status"], r["resolved_by"] or None): int(r["n"]) for r in rows if r["n"]}


def capture(row: Row) -> CaptureRow:
    """A captures row, from either backend."""
    return CaptureRow(
        pk=row["pk"],
        task_pk=row["task_pk"],
        video_id=row["video_id"],
        variant=row["variant"],
        url=row["url"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        settled_at=row["settled_at"],
        size=row["size"],
        sha256=row["sha256"],
        content_type=row["content_type"],
        key=row["key"],
        error=row["error"],
    )


def stored(column: str, value: Any) -> Any:
    """A change's value as its tasks column keeps it: the video as JSON text, the rest as is."""
    return orjson.dumps(value).decode() if column == "video" else value
