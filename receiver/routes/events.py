"""/v1 routes of the downstream side: subscriptions, events, replay, dead letters, the SSE stream."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from receiver.context import Context
from receiver.errors import ApiError, InvalidRequest, NotFound, OverLimit, Unavailable, UnknownCursor
from receiver.outbound.addresses import redact_url
from receiver.outbound.destinations import check_target
from receiver.routes.http import (
    authorize,
    check_outbound_name,
    check_outbound_url,
    json_response,
    read_json_object,
    store_call,
)
from receiver.routes.openapi import Header, Operation, operation
from receiver.routes.schemas import (
    DeadLetterQuery,
    EventDetail,
    EventList,
    EventListQuery,
    EventReplayRequest,
    Replay,
    ReplayStatus,
    SendList,
    StreamQuery,
    Subscription,
    SubscriptionCreate,
    SubscriptionList,
    SubscriptionListQuery,
    convert,
    convert_query,
    given,
)
from receiver.routes.views import list_body
from receiver.rules.ids import new_id, parse_id
from receiver.rules.records import EventRow, OutboxRow, ReplayFilter, SubscriptionRow
from receiver.rules.redact import strip_callbacks
from receiver.rules.signatures import SecretFormatError, parse_key
from receiver.secrets_at_rest import SecretBox
from receiver.workers.dispatcher import event_body

__all__ = ["routes"]

_STREAM_BATCH = 100
_KEEPALIVE = 15.0
_RECHECK = 1.0
# Seconds a refused stream reader is asked to wait: a slot frees only when another reader leaves.
_STREAM_RETRY_AFTER = 30


def _ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    authorize(request, ctx.settings.api_keys)
    return ctx


def subscription_view(row: SubscriptionRow, *, secret: SecretBox | None = None) -> dict[str, Any]:
    """The subscription as reads show it; with `secret` (the box that opens it), its secret too."""
    view: dict[str, Any] = {
        "id": row.id,
        "object": "subscription",
        "url": redact_url(row.url),
        "events": row.events,
        "status": row.status,
        "created_at": int(row.created_at),
        "disabled_reason": row.disabled_reason,
    }
    if secret is not None:
        view["secret"] = secret.open_secret(row.secret)
    return view


def event_view(row: EventRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "event",
        "type": row.type,
        "created_at": int(row.created_at),
        "data": strip_callbacks(row.data),
    }


def send_view(row: OutboxRow) -> dict[str, Any]:
    return {
        "id": f"snd_{row.pk}",
        "object": "send",
        "event_id": row.event_id,
        "video_id": row.video_id,
        "subscription_id": row.subscription_id,
        "replay_id": row.replay_id,
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": int(row.next_attempt_at) if row.next_attempt_at is not None else None,
        "settled_at": int(row.settled_at) if row.settled_at is not None else None,
        "last_status": row.last_status,
        "last_error": row.last_error,
        "attempt_log": [
            {"at": int(a.at), "status": a.status, "latency_ms": round(a.latency_ms, 1), "error": a.error}
            for a in row.log
        ],
    }


@operation(
    Operation(
        "createSubscription",
        "Subscribe a URL to events (answers with its whsec_ secret)",
        tag="subscriptions",
        answer=Subscription,
        body=SubscriptionCreate,
        errors=(400, 413, 503),
        links=tuple(
            (op, "subscription_id")
            for op in ("getSubscription", "pauseSubscription", "resumeSubscription", "deleteSubscription")
        ),
    )
)
async def create_subscription(request: Request) -> Response:
    ctx = _ctx(request)
    body = convert(await read_json_object(request, 64 * 1024), SubscriptionCreate)
    url = check_outbound_url(ctx.settings, body.url, "url", brokers=True)
    try:
        check_target(url)
    except ValueError as exc:
        raise InvalidRequest(f"url: {exc}", param="url", code="invalid_url") from None
    await check_outbound_name(ctx.settings, url, "url")
    events: list[str] | None = sorted(set(body.events)) if body.events else None
    secret = body.secret
    if secret is None:
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    else:
        try:
            if parse_key(secret).scheme != "whsec":
                raise SecretFormatError("not whsec_")
        except SecretFormatError:
            raise InvalidRequest("secret must be a whsec_<base64> secret", param="secret") from None
    limit = ctx.settings.max_subscriptions
    try:
        row = await store_call(
            ctx,
            ctx.store.create_subscription(
                ctx.secrets.seal_url(url), events, ctx.secrets.seal_secret(secret), ctx.clock(), limit=limit
            ),
        )
    except OverLimit:
        raise InvalidRequest(
            f"there are {limit} subscriptions already, the most RECEIVER_MAX_SUBSCRIPTIONS allows;"
            " delete one first",
            code="too_many_subscriptions",
        ) from None
    return json_response(subscription_view(row, secret=ctx.secrets))


@operation(
    Operation(
        "listSubscriptions",
        "Subscriptions, newest first",
        tag="subscriptions",
        answer=SubscriptionList,
        query=SubscriptionListQuery,
        errors=(400,),
    )
)
async def list_subscriptions(request: Request) -> Response:
    ctx = _ctx(request)
    query = convert_query(request.query_params, SubscriptionListQuery)
    page = await ctx.store.list_subscriptions(query.limit, given(query.after))
    return json_response(list_body([subscription_view(s) for s in page.rows], page.has_more))


async def _subscription(ctx: Context, request: Request) -> SubscriptionRow:
    row = await ctx.store.get_subscription(parse_id("subscription", request.path_params["subscription_id"]))
    if row is None or row.task_pk is not None:
        raise NotFound("no such subscription", param="id")
    return row


@operation(
    Operation(
        "getSubscription",
        "A subscription, with its secret",
        tag="subscriptions",
        answer=Subscription,
        errors=(404,),
    )
)
async def get_subscription(request: Request) -> Response:
    ctx = _ctx(request)
    return json_response(subscription_view(await _subscription(ctx, request), secret=ctx.secrets))


async def _set_status(request: Request, status: str) -> Response:
    ctx = _ctx(request)
    row = await _subscription(ctx, request)
    updated = await store_call(ctx, ctx.store.set_subscription_status(row.id, status, ctx.clock()))
    if updated is None:
        raise NotFound("no such subscription", param="id")
    if status == "active":
        ctx.fanout_wakeup.set()  # held sends may go now
    return json_response(subscription_view(updated) | ({"deleted": True} if status == "deleted" else {}))


@operation(
    Operation(
        "deleteSubscription",
        "Delete a subscription",
        tag="subscriptions",
        answer=Subscription,
        errors=(404, 503),
    )
)
async def delete_subscription(request: Request) -> Response:
    return await _set_status(request, "deleted")


@operation(
    Operation(
        "pauseSubscription",
        "Hold a subscription's sends (kept, not lost)",
        tag="subscriptions",
        answer=Subscription,
        errors=(404, 503),
    )
)
async def pause_subscription(request: Request) -> Response:
    return await _set_status(request, "paused")


@operation(
    Operation(
        "resumeSubscription",
        "Let a paused subscription's sends go",
        tag="subscriptions",
        answer=Subscription,
        errors=(404, 503),
    )
)
async def resume_subscription(request: Request) -> Response:
    return await _set_status(request, "active")


@operation(
    Operation(
        "listEvents",
        "Events, newest first",
        tag="events",
        answer=EventList,
        query=EventListQuery,
        errors=(400,),
    )
)
async def list_events(request: Request) -> Response:
    ctx = _ctx(request)
    query = convert_query(request.query_params, EventListQuery)
    page = await ctx.store.list_events(
        given(query.video_id), given(query.type), query.limit, given(query.after)
    )
    return json_response(list_body([event_view(e) for e in page.rows], page.has_more))


@operation(
    Operation(
        "getEvent",
        "An event with its sends and their attempts",
        tag="events",
        answer=EventDetail,
        errors=(404,),
    )
)
async def get_event(request: Request) -> Response:
    ctx = _ctx(request)
    if request.path_params["event_id"] == "replay":
        # GET on POST /v1/events/replay lands here (the id route matches any name): say so.
        raise ApiError("method not allowed", status=405, code="method_not_allowed", headers={"allow": "POST"})
    event = await ctx.store.get_event(parse_id("event", request.path_params["event_id"]))
    if event is None:
        raise NotFound("no such event", param="id")
    view = event_view(event)
    view["sends"] = [send_view(s) for s in await ctx.store.event_sends(event.pk)]
    return json_response(view)


def _time(value: float | str | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except (ValueError, OverflowError):
            pass
    raise InvalidRequest(f"{name} must be a Unix time or an ISO-8601 string", param=name)


@operation(
    Operation(
        "replayEvents",
        "Send stored events again, under their own ids",
        tag="events",
        answer=Replay,
        body=EventReplayRequest,
        errors=(400, 413, 503),
        links=(("getReplay", "replay_id"),),
    )
)
async def replay_events(request: Request) -> Response:
    ctx = _ctx(request)
    body = convert(await read_json_object(request, 1024 * 1024), EventReplayRequest)
    subscription_id = body.subscription_id
    if subscription_id is not None and await ctx.store.get_subscription(subscription_id) is None:
        raise InvalidRequest("subscription_id names no subscription", param="subscription_id")
    selection = ReplayFilter(
        subscription_id=subscription_id,
        video_id=body.video_id,
        since=_time(body.since, "since"),
        until=_time(body.until, "until"),
        event_ids=body.event_ids,
    )
    replay_id = new_id("replay")
    limit = ctx.settings.replay_max_sends
    try:
        selected, queued = await store_call(
            ctx, ctx.store.queue_replay(selection, ctx.clock(), replay_id, max_sends=limit)
        )
    except OverLimit:
        # The count stops at limit + 1: "more than" is the most it can say without reading
        # every row the replay selects.
        raise InvalidRequest(
            f"this replay would queue more than {limit} sends (its events times the subscriptions"
            f" each goes to), past RECEIVER_REPLAY_MAX_SENDS ({limit}); narrow it with"
            " subscription_id, video_id, event_ids, since or until",
            code="replay_too_large",
        ) from None
    if not queued:
        # Nothing was queued, so nothing is kept under that id: answer none rather than an id
        # that GET /v1/replays/{id} would not know.
        return json_response({"id": None, "object": "replay", "events": selected, "sends": 0})
    ctx.fanout_wakeup.set()
    return json_response({"id": replay_id, "object": "replay", "events": selected, "sends": queued})


@operation(
    Operation("getReplay", "How far a replay has got", tag="events", answer=ReplayStatus, errors=(404,))
)
async def replay_status(request: Request) -> Response:
    ctx = _ctx(request)
    counts = await ctx.store.replay_progress(parse_id("replay", request.path_params["replay_id"]))
    if not counts:
        raise NotFound("no such replay", param="id")
    total = sum(counts.values())
    retrying, last_error = await ctx.store.replay_failures(request.path_params["replay_id"])
    return json_response(
        {
            "id": request.path_params["replay_id"],
            "object": "replay",
            "sends": total,
            "by_status": counts,
            "done": counts.get("pending", 0) == 0,
            "retrying": retrying,
            "last_error": last_error,
        }
    )


@operation(
    Operation(
        "listDeadLetters",
        "Sends that exhausted every retry, newest first",
        tag="events",
        answer=SendList,
        query=DeadLetterQuery,
        errors=(400,),
    )
)
async def dead_letters(request: Request) -> Response:
    ctx = _ctx(request)
    query = convert_query(request.query_params, DeadLetterQuery)
    limit, after = query.limit, given(query.after)
    cursor: int | None = None
    if after is not None:
        if not after.startswith("snd_") or not after[4:].isdigit():
            raise InvalidRequest("after must be a send id (snd_...)", param="after")
        cursor = int(after[4:])
    page = await ctx.store.list_outbox("dead", given(query.subscription_id) or None, limit, cursor)
    return json_response(list_body([send_view(s) for s in page.rows], page.has_more))


@operation(
    Operation(
        "streamEvents",
        "New events as Server-Sent Events; Last-Event-ID resumes",
        tag="events",
        media="text/event-stream",
        query=StreamQuery,
        headers=(Header("Last-Event-ID", "Resume after this event id"),),
        errors=(400, 503),
    )
)
async def stream_events(request: Request) -> Response:
    """Server-Sent Events of new events; Last-Event-ID (header or ?last_event_id) resumes.

    A stream holds its connection for as long as the reader likes, so this process serves at
    most RECEIVER_MAX_STREAMS of them and never more than half of RECEIVER_MAX_CONNECTIONS: the
    connections a stream cannot take are the ones deliveries always find.
    """
    ctx = _ctx(request)
    query = convert_query(request.query_params, StreamQuery)
    last = request.headers.get("last-event-id") or given(query.last_event_id)
    if last is not None:
        parse_id("event", last, "Last-Event-ID")
    if last is None:
        # A fresh reader starts from now: only events recorded after it connected.
        newest = await ctx.store.list_events(None, None, 1, None)
        last = newest.rows[0].id if newest.rows else None
    else:
        try:
            await ctx.store.events_after(last, 1)
        except UnknownCursor:
            raise InvalidRequest("Last-Event-ID names no event", param="Last-Event-ID") from None

    async def frames() -> AsyncIterator[bytes]:
        cursor = last
        yield b": connected\n\n"
        quiet = 0.0
        while True:
            signal = ctx.new_events
            rows = await ctx.store.events_after(cursor, _STREAM_BATCH)
            for row in rows:
                yield b"id: %s\nevent: %s\ndata: %s\n\n" % (
                    row.id.encode(),
                    row.type.encode(),
                    event_body(row),
                )
                cursor = row.id
            if len(rows) == _STREAM_BATCH:
                continue
            if rows:
                quiet = 0.0
            # Woken by a new event here or (through the store) in another process; a short
            # timeout as well, for what another process recorded while the wake-up was lost
            # and for events that became readable only when an older transaction ended.
            try:
                await asyncio.wait_for(signal.wait(), timeout=_RECHECK)
            except TimeoutError:
                quiet += _RECHECK
                if quiet >= _KEEPALIVE:
                    quiet = 0.0
                    yield b": keep-alive\n\n"

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    cap = min(ctx.settings.max_streams, ctx.settings.max_connections // 2)
    # Checked and taken with no await between: concurrent readers cannot all pass at once.
    if ctx.open_streams >= cap:
        raise Unavailable(
            f"{cap} event streams are open, the most this process serves at once",
            code="too_many_streams",
            headers={"retry-after": str(_STREAM_RETRY_AFTER), "connection": "close"},
        )
    ctx.open_streams += 1
    return _Stream(ctx, frames(), headers)


class _Stream(StreamingResponse):
    """An event stream that gives its slot back when it ends, however it ends (the reader
    leaves, the app stops, a store error): the finally is entered at the first step of the call."""

    def __init__(self, ctx: Context, frames: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        super().__init__(frames, media_type="text/event-stream", headers=headers)
        self._ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._ctx.open_streams -= 1


def routes() -> list[Route]:
    return [
        Route("/v1/subscriptions", create_subscription, methods=["POST"]),
        Route("/v1/subscriptions", list_subscriptions, methods=["GET"]),
        Route("/v1/subscriptions/{subscription_id:str}", get_subscription, methods=["GET"]),
        Route("/v1/subscriptions/{subscription_id:str}", delete_subscription, methods=["DELETE"]),
        Route("/v1/subscriptions/{subscription_id:str}/pause", pause_subscription, methods=["POST"]),
        Route("/v1/subscriptions/{subscription_id:str}/resume", resume_subscription, methods=["POST"]),
        Route("/v1/events", list_events, methods=["GET"]),
        Route("/v1/events/stream", stream_events, methods=["GET"]),
        Route("/v1/events/replay", replay_events, methods=["POST"]),
        Route("/v1/events/{event_id:str}", get_event, methods=["GET"]),
        Route("/v1/replays/{replay_id:str}", replay_status, methods=["GET"]),
        Route("/v1/dead-letters", dead_letters, methods=["GET"]),
    ]
