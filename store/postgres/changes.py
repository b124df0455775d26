"""PostgreSQL: writing receiver.rules.decide's change set for one task (the ack path's batches: writer)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from receiver.rules.records import NewEvent, TaskChange
from store import rows
from store.sql import subscribed

__all__ = ["LISTED", "SUBSCRIBED", "record_events", "write_change"]

# A task joins the task list when it gets its video id: at the place of the transaction that
# gave it (cursors read in commit order).
LISTED = "listed_tx = pg_current_xact_id()::text::bigint"
# Which subscriptions `s` an event `e` is sent to (store.sql): for the one-task path here, the
# ack path's batch statement and replays.
SUBSCRIBED = subscribed("s.events ? e.type")


def _statement(change: TaskChange) -> str:
    """UPDATE for a change's columns: $1 is the task's pk, then the sets, then the adds."""
    sets = [f"{column} = ${n}" for n, column in enumerate(change.sets, start=2)]
    start = 2 + len(change.sets)
    sets += [f"{column} = {column} + ${n}" for n, column in enumerate(change.adds, start=start)]
    if "video_id" in change.sets:
        sets.append(LISTED)  # it joins the task list now: at this transaction's place
    return f"UPDATE tasks SET {', '.join(sets)} WHERE pk = $1"


def _args(task_pk: int, change: TaskChange) -> tuple[Any, ...]:
    return (task_pk, *(rows.stored(c, v) for c, v in change.sets.items()), *change.adds.values())


async def write_change(conn: asyncpg.Connection, task_pk: int, change: TaskChange) -> int | None:
    """One task's change; for a terminal result its event and sends. Returns the sends queued
    when it recorded an event, else None."""
    if change.sets or change.adds:
        await conn.execute(_statement(change), *_args(task_pk, change))
    if change.event is None:
        return None
    return (await record_events(conn, [(task_pk, change.event)]))[task_pk]


async def record_events(conn: asyncpg.Connection, events: list[tuple[int, NewEvent]]) -> dict[int, int]:
    """Terminal results' events and their sends (the transactional outbox), in this transaction:
    "recorded but never queued" cannot happen. Returns the sends queued per task."""
    created = await conn.fetch(
        "INSERT INTO events (id, task_pk, video_id, type, created_at, data)"
        " SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::float8[], $6::text[])"
        " RETURNING pk, task_pk, type, created_at",
        [e.id for _, e in events],
        [pk for pk, _ in events],
        [e.video_id for _, e in events],
        [e.type for _, e in events],
        [e.created_at for _, e in events],
        [json.dumps(e.data) for _, e in events],
    )
    sends = await conn.fetch(
        "INSERT INTO outbox (event_pk, subscription_pk, status, next_attempt_at, created_at, held)"
        " SELECT e.pk, s.pk, 'pending', e.at, e.at, s.status = 'paused'"
        " FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::float8[]) AS e(pk, task_pk, type, at)"
        f" JOIN subscriptions s ON {SUBSCRIBED} RETURNING event_pk",
        [r["pk"] for r in created],
        [r["task_pk"] for r in created],
        [r["type"] for r in created],
        [r["created_at"] for r in created],
    )
    files = [(pk, e.video_id, v, url, e.created_at) for pk, e in events for v, url in e.files]
    if files:
        await conn.execute(
            "INSERT INTO captures (task_pk, video_id, variant, url, status, next_attempt_at, created_at)"
            " SELECT f.task_pk, f.video_id, f.variant, f.url, 'pending', f.at, f.at"
            " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::float8[])"
            " AS f(task_pk, video_id, variant, url, at)"
            " ON CONFLICT (task_pk, variant) DO NOTHING",
            *(list(column) for column in zip(*files, strict=True)),
        )
    task_of = {r["pk"]: r["task_pk"] for r in created}
    counts = dict.fromkeys(task_of.values(), 0)
    for row in sends:
        counts[task_of[row["event_pk"]]] += 1
    return counts
