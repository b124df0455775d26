"""/v1/events, replays and dead letters: what was recorded for subscribers, and sending it again."""

from __future__ import annotations

from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.errors import ApiError, InvalidRequest, NotFound, OverLimit
from receiver.routes.http import (
    authorized,
    json_response,
    read_json_object,
    store_call,
)
from receiver.routes.openapi import Operation, operation
from receiver.routes.schemas import (
    DeadLetterQuery,
    EventDetail,
    EventList,
    EventListQuery,
    EventReplayRequest,
    Replay,
    ReplayStatus,
    SendList,
    convert,
    convert_query,
    given,
)
from receiver.routes.views import event_view, list_body, send_view
from receiver.rules.ids import new_id, parse_id
from receiver.rules.records import ReplayFilter

__all__ = ["routes"]


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
    ctx = authorized(request)
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
    ctx = authorized(request)
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
    ctx = authorized(request)
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
    ctx = authorized(request)
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
    ctx = authorized(request)
    query = convert_query(request.query_params, DeadLetterQuery)
    limit, after = query.limit, given(query.after)
    cursor: int | None = None
    if after is not None:
        if not after.startswith("snd_") or not after[4:].isdigit():
            raise InvalidRequest("after must be a send id (snd_...)", param="after")
        cursor = int(after[4:])
    page = await ctx.store.list_outbox("dead", given(query.subscription_id) or None, limit, cursor)
    return json_response(list_body([send_view(s) for s in page.rows], page.has_more))


def routes() -> list[Route]:
    return [
        Route("/v1/events", list_events, methods=["GET"]),
        Route("/v1/events/replay", replay_events, methods=["POST"]),
        Route("/v1/events/{event_id:str}", get_event, methods=["GET"]),
        Route("/v1/replays/{replay_id:str}", replay_status, methods=["GET"]),
        Route("/v1/dead-letters", dead_letters, methods=["GET"]),
    ]
