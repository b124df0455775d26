"""/v1/stats and /v1/health/subscribers: the dashboard's summaries, at a cost that does not grow
with the store."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.context import Context
from receiver.outbound.addresses import redact_url
from receiver.routes.http import authorized, json_response
from receiver.routes.openapi import Operation, operation
from receiver.routes.schemas import (
    Stats,
    SubscriberHealthList,
    SubscriptionListQuery,
    convert_query,
    given,
)
from receiver.routes.views import list_body
from receiver.rules.records import OutboxRow, SubscriptionRow

log = logging.getLogger("receiver.routes.stats")

OPEN_STATUSES = ("submitting", "queued", "in_progress")  # not "unconfirmed": it may never have begun
# Subscriber health reads each subscriber's newest sends of the newest events, at most
# _HEALTH_SENDS of them (first sends and replays; one index range per subscriber whatever the
# outbox's size), and counts its dead letters through their own index, up to a cap.
_HEALTH_EVENTS = 100


_HEALTH_SENDS = 100


_DEAD_CAP = 1000


@operation(
    Operation(
        "getStats",
        "Tasks by state and by how their result came, the oldest open task, sends by state",
        tag="operate",
        answer=Stats,
    )
)
async def stats(request: Request) -> Response:
    """Tasks by state and by how their result came, the oldest open task, sends by state."""
    ctx = authorized(request)
    tasks = await ctx.store.task_stats()
    sends = await ctx.store.outbox_stats()
    last = await ctx.store.last_prune()
    settings = ctx.settings
    now = ctx.clock()
    by_status: dict[str, int] = {}
    by_resolved_by: dict[str, int] = {}
    by_state = []
    for (status, resolved_by), count in sorted(
        tasks.by_state.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
    ):
        by_status[status] = by_status.get(status, 0) + count
        if resolved_by is not None:
            by_resolved_by[resolved_by] = by_resolved_by.get(resolved_by, 0) + count
        by_state.append({"status": status, "resolved_by": resolved_by, "count": count})
    oldest = tasks.oldest_open_created_at
    return json_response(
        {
            "object": "stats",
            "at": int(now),
            "tasks": {
                "total": sum(by_status.values()),
                "open": sum(by_status.get(s, 0) for s in OPEN_STATUSES),
                "by_status": by_status,
                "by_resolved_by": by_resolved_by,
                "by_state": by_state,
                "oldest_open_created_at": int(oldest) if oldest is not None else None,
                "oldest_open_age_seconds": round(max(0.0, now - oldest), 1) if oldest is not None else None,
            },
            "sends": {"by_status": dict(sorted(sends.by_status.items()))},
            "retention": {
                "retention_seconds": settings.retention,
                "task_retention_seconds": settings.task_retention,
                "media_retention_seconds": settings.media_retention,
                "prune_interval_seconds": settings.prune_interval,
                "last_prune": {
                    "last_run_at": int(last.at) if last.at is not None else None,
                    "last_duration_seconds": round(last.took, 3) if last.took is not None else None,
                    "pruned": last.counts,
                },
            },
        }
    )


async def _recent_sends(
    ctx: Context, subscriptions: list[SubscriptionRow]
) -> tuple[int, dict[int, list[OutboxRow]]]:
    """Each subscriber's newest sends (first and replayed, _HEALTH_SENDS at most) of the newest
    _HEALTH_EVENTS events, by subscription pk; and how many events that was."""
    events = await ctx.store.list_events(None, None, _HEALTH_EVENTS, None)
    if not events.rows:
        return 0, {}
    first = min(e.pk for e in events.rows)
    sends = await ctx.store.recent_sends([s.pk for s in subscriptions], first, _HEALTH_SENDS)
    return len(events.rows), sends


def subscriber_health(
    subscription: SubscriptionRow,
    sends: list[OutboxRow],
    dead_letters: tuple[int, bool],
    window: int,
    now: float,
) -> dict[str, Any]:
    """One subscriber's figures (pure). In flight: an attempt is being made now (a sender holds
    the send's lease); retrying: it failed before and waits for its next attempt."""
    pending = [r for r in sends if r.status == "pending"]
    in_flight = sum(1 for r in pending if r.leased_until is not None and r.leased_until > now)
    waiting = [r for r in pending if r.leased_until is None or r.leased_until <= now]
    counts = {s: sum(1 for r in sends if r.status == s) for s in ("delivered", "failed", "dead", "pending")}
    settled = counts["delivered"] + counts["failed"] + counts["dead"]
    attempts = sorted(((a, r) for r in sends for a in r.log), key=lambda ar: ar[0].at)
    last_error = last_success = None
    for attempt, row in reversed(attempts):
        # A failed attempt always says why; a broker's confirm has no HTTP status to go by.
        ok = attempt.error is None
        if ok and last_success is None:
            last_success = int(attempt.at)
        if not ok and last_error is None:
            last_error = {
                "send_id": f"snd_{row.pk}",
                "event_id": row.event_id,
                "video_id": row.video_id,
                "status": attempt.status,
                "error": attempt.error or f"answered {attempt.status}",
                "at": int(attempt.at),
            }
        if last_error is not None and last_success is not None:
            break
    return {
        "object": "subscriber_health",
        "subscription_id": subscription.id,
        "url": redact_url(subscription.url),
        "status": subscription.status,
        "disabled_reason": subscription.disabled_reason,
        "window_events": window,
        "sends": len(sends),
        **counts,
        "success_rate": round(counts["delivered"] / settled, 4) if settled else None,
        "in_flight": in_flight,
        "retrying": sum(1 for r in waiting if r.attempts > 0),
        "dead_letters": dead_letters[0],
        "dead_letters_more": dead_letters[1],
        "last_success_at": last_success,
        "last_error": last_error,
    }


@operation(
    Operation(
        "listSubscriberHealth",
        "Per subscriber: success rate, sends in flight and retrying, latest error and success, dead letters",
        tag="subscriptions",
        answer=SubscriberHealthList,
        query=SubscriptionListQuery,
        errors=(400,),
    )
)
async def list_subscriber_health(request: Request) -> Response:
    """Per subscriber, over the sends of the newest events: success rate, sends in flight and
    retrying, the latest error and success; and all its dead letters. Pages like the
    subscriptions it describes."""
    ctx = authorized(request)
    query = convert_query(request.query_params, SubscriptionListQuery)
    page = await ctx.store.list_subscriptions(query.limit, given(query.after))
    window, recent = await _recent_sends(ctx, page.rows) if page.rows else (0, {})
    dead = await ctx.store.dead_letter_counts([s.pk for s in page.rows], _DEAD_CAP) if page.rows else {}
    data = []
    for s in page.rows:
        dead_letters = dead.get(s.pk, 0)
        capped = (min(dead_letters, _DEAD_CAP), dead_letters > _DEAD_CAP)
        data.append(subscriber_health(s, recent.get(s.pk, []), capped, window, ctx.clock()))
    return json_response(list_body(data, page.has_more, key="subscription_id"))


def routes() -> list[Route]:
    return [
        Route("/v1/stats", stats, methods=["GET"]),
        Route("/v1/health/subscribers", list_subscriber_health, methods=["GET"]),
    ]
