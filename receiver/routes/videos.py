"""/v1 routes: submit, read, list, inspect and replay deliveries, and the dashboard's summaries."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import secrets
import socket
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.context import Context
from receiver.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    StoreUnavailable,
    Unavailable,
    UpstreamError,
    WrongVideo,
    to_api_error,
)
from receiver.inbound.ingest import reprocess
from receiver.inbound.payloads import normalise_status
from receiver.inbound.redact import redact_headers, strip_callbacks, strip_text
from receiver.outbound.addresses import OutboundURLError, address_allowed, check_url, host_address, redact_url
from receiver.outbound.provider import ProviderError
from receiver.routes.content import get_video_content
from receiver.routes.forms import is_multipart, read_form
from receiver.routes.http import authorize, json_response, read_json_object
from receiver.routes.openapi import Header, Operation, operation
from receiver.routes.schemas import (
    Delivery,
    DeliveryHealthList,
    DeliveryList,
    DeliveryListQuery,
    DeliveryReplay,
    Stats,
    SubscriberHealthList,
    SubscriptionListQuery,
    Video,
    VideoCreate,
    VideoList,
    VideoListQuery,
    convert,
    convert_form,
    convert_query,
    given,
    to_dict,
)
from receiver.rules import jsonpolicy
from receiver.rules.decide import ORPHAN_GRACE
from receiver.rules.ids import parse_id
from receiver.rules.records import CaptureRow, DeliveryRow, NewTask, OutboxRow, SubscriptionRow, TaskRow
from receiver.settings import Settings

__all__ = ["check_outbound_name", "check_outbound_url", "list_body", "routes", "store_call", "task_view"]

log = logging.getLogger("receiver.routes.videos")

RESOLVE_TIMEOUT = 2.0  # seconds a subscribe-time lookup of a URL's host name may take
OPEN_STATUSES = ("submitting", "queued", "in_progress")  # not "unconfirmed": it may never have begun
# Subscriber health reads each subscriber's newest sends of the newest events, at most
# _HEALTH_SENDS of them (first sends and replays; one index range per subscriber whatever the
# outbox's size), and counts its dead letters through their own index, up to a cap.
_HEALTH_EVENTS = 100
_HEALTH_SENDS = 100
_DEAD_CAP = 1000


def check_outbound_url(settings: Settings, url: object, param: str, *, brokers: bool = False) -> str:
    """A URL we may send to (receiver.outbound.addresses's rule), else a 400 naming `param`; with
    `brokers`, a message broker's URL too."""
    try:
        return check_url(url, settings.outbound_allow, brokers=brokers)
    except OutboundURLError as exc:
        raise InvalidRequest(f"{param} {exc}", param=param, code=exc.code) from None


async def check_outbound_name(settings: Settings, url: str, param: str) -> None:
    """The same rule on what a URL's host name resolves to now, so a name pointing inside is
    refused when subscribing, not only at each send. A name that does not resolve (yet) is left
    to the check at connect time, which runs on every connection anyway."""
    host = urlsplit(url).hostname or ""
    if host_address(host) is not None:
        return  # an address in itself: check_url has judged it
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), timeout=RESOLVE_TIMEOUT
        )
    except (OSError, TimeoutError, UnicodeError):
        return
    if not all(address_allowed(str(info[4][0]), settings.outbound_allow) for info in infos):
        message = f"{param} resolves to a private, loopback or reserved address"
        raise InvalidRequest(message, param=param, code="url_not_allowed")


def validate_submit(submit: VideoCreate, settings: Settings) -> None:
    """What the shape cannot say: the metadata's encoded size, the callback URL's address rule."""
    metadata = given(submit.metadata)
    if (
        metadata is not None
        and len(json.dumps(metadata, ensure_ascii=False).encode("utf-8", "surrogatepass")) > 16_384
    ):
        raise InvalidRequest("metadata is larger than 16 KiB", param="metadata")
    callback_url = given(submit.callback_url)
    if callback_url is not None:
        check_outbound_url(settings, callback_url, "callback_url")
        if settings.callback_secret is None:
            raise InvalidRequest(
                "callback_url needs RECEIVER_CALLBACK_SECRET to be set on the receiver "
                "(it signs the events sent to it)",
                param="callback_url",
                code="callback_secret_unset",
            )


def file_view(row: CaptureRow) -> dict[str, Any]:
    return {
        "variant": row.variant,
        "status": row.status,
        "size": row.size,
        "sha256": row.sha256,
        "content_type": row.content_type,
        "attempts": row.attempts,
        "error": row.error,
        "kept_at": int(row.settled_at) if row.status == "kept" and row.settled_at is not None else None,
    }


def task_view(
    task: TaskRow, request: dict[str, Any] | None = None, files: list[CaptureRow] | None = None
) -> dict[str, Any]:
    """The video object we answer with: the provider's fields plus our `receiver` block."""
    # Rows stored before the provider's echo was stripped on the way in are stripped here too.
    video: dict[str, Any] = strip_callbacks(task.video)
    video.pop("provider_status", None)
    video.update(id=task.video_id, object="video", status=task.status, model=video.get("model") or task.model)
    if request is not None and "prompt" not in video:
        video["prompt"] = request.get("prompt")
    video.setdefault("created_at", int(task.created_at))
    video["receiver"] = {
        "resolved_by": task.resolved_by,
        "deliveries": task.deliveries,
        "duplicates": task.duplicates,
        "polls": task.polls,
        "anomalies": task.anomalies,
        "submitted_at": int(task.created_at),
        "terminal_at": int(task.terminal_at) if task.terminal_at is not None else None,
        "next_poll_at": int(task.next_poll_at) if task.next_poll_at is not None else None,
        "files": [file_view(f) for f in files or ()],
    }
    return video


def delivery_view(row: DeliveryRow) -> dict[str, Any]:
    """A stored delivery as received, minus our callback URL and any credential header. A body
    outside the JSON policy (kept as received) is shown as text (base64 when not UTF-8), never
    a failed read. A pruned one keeps its row and key but no body or headers."""
    body: Any
    if row.pruned:
        body, encoding = None, "pruned"
    else:
        body, encoding = _shown_body(row.body)
    return {
        "id": row.id,
        "object": "delivery",
        "video_id": row.video_id,
        "route": row.route,
        "received_at": int(row.received_at),
        "last_seen_at": int(row.last_seen_at),
        "verified_by": row.verified_by,
        "dedupe_key": row.dedupe_key,
        "event_type": row.event_type,
        "status": row.status,
        "outcome": row.outcome,
        "repeats": row.repeats,
        "headers": redact_headers(row.headers),
        "body": body,
        "body_encoding": encoding,
    }


def _shown_body(raw: bytes) -> tuple[Any, str]:
    try:
        return strip_callbacks(jsonpolicy.loads(raw)), "json"
    except jsonpolicy.JSONPolicyError:
        try:
            return strip_text(raw.decode("utf-8")), "text"
        except UnicodeDecodeError:
            return base64.b64encode(strip_text(raw.decode("latin-1")).encode("latin-1")).decode(), "base64"


def list_body(data: list[dict[str, Any]], has_more: bool, key: str = "id") -> dict[str, Any]:
    """A list page. first_id and last_id are OpenAI's: its SDK pages on last_id. `key` names the
    field of each item that `after` takes."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0][key] if data else None,
        "last_id": data[-1][key] if data else None,
        "has_more": has_more,
    }


def _ctx(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


async def read_submit(request: Request, settings: Settings) -> VideoCreate:
    """The submit body, as JSON or as multipart/form-data (the OpenAI SDK's videos.create):
    the same fields, checked by the same shape."""
    if is_multipart(request):
        submit = convert_form(await read_form(request, settings.max_body_bytes), VideoCreate)
    else:
        submit = convert(await read_json_object(request, settings.max_body_bytes), VideoCreate)
    validate_submit(submit, settings)
    return submit


@operation(
    Operation(
        "createVideo",
        "Submit a video task to the provider",
        tag="videos",
        answer=Video,
        body=VideoCreate,
        multipart=True,
        headers=(Header("Idempotency-Key", "A retry with the same key returns the first task"),),
        errors=(400, 409, 413, 429, 502, 503, 504),
        links=(("getVideo", "video_id"),),
    )
)
async def submit(request: Request) -> Response:
    ctx = _ctx(request)
    scope = authorize(request, ctx.settings.api_keys)
    body = to_dict(await read_submit(request, ctx.settings))
    if "callback_url" in body:
        await check_outbound_name(ctx.settings, body["callback_url"], "callback_url")
    idem_key = request.headers.get("idempotency-key")
    if idem_key is not None and not 1 <= len(idem_key) <= 255:
        raise InvalidRequest("Idempotency-Key must be 1 to 255 characters", param="Idempotency-Key")
    request_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    now = ctx.clock()
    token = secrets.token_urlsafe(32)
    expires_after = body.get("execution_expires_after")
    created = await store_call(
        ctx,
        ctx.store.create_task(
            NewTask(
                token_hash=hashlib.sha256(token.encode()).hexdigest(),
                model=body["model"],
                request=body,
                callback_url=body.get("callback_url"),
                idem_scope=scope if idem_key is not None else None,
                idem_key=idem_key,
                request_hash=request_hash if idem_key is not None else None,
                created_at=now,
                expires_at=now + expires_after if isinstance(expires_after, int) else None,
                orphan_after=ctx.settings.provider_timeout + ORPHAN_GRACE,
                confirm_window=ctx.settings.submit_confirm_window,
            )
        ),
    )
    if created.state == "mismatch":
        raise InvalidRequest(
            "Idempotency-Key was already used with a different request body",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    if created.state == "in_flight":
        raise Conflict(
            "a request with this Idempotency-Key is still being processed; retry later",
            code="idempotency_in_flight",
        )
    if created.state == "unconfirmed":
        raise Conflict(
            "the first request with this Idempotency-Key reached the provider with an unknown outcome; "
            "it is not submitted again while the provider may have it: retry with the same key until "
            "its result is known",
            code="submit_unconfirmed",
        )
    if created.state == "exists":
        assert created.task is not None
        return json_response(task_view(created.task, body), headers={"idempotent-replayed": "true"})
    assert created.pk is not None
    outbound = {k: v for k, v in body.items() if k != "callback_url"}
    outbound["callback_url"] = f"{ctx.settings.public_url}/webhooks/{token}"
    try:
        # The provider may echo our callback URL, or only its token: neither goes further.
        answer = strip_callbacks(await ctx.provider.create(outbound), (token,))
    except ProviderError as exc:
        exc.message = strip_text(exc.message, (token,))
        # A refusal, or a request that never left: the provider has no such task. The row goes
        # unless a delivery came meanwhile (then the provider has it after all).
        if not exc.ambiguous and await store_call(ctx, ctx.store.abandon_submit(created.pk)):
            raise to_api_error(exc) from None
        return await _unconfirmed(ctx, created.pk, body, exc)
    # We have its id, so the task exists: a status we cannot read counts as just queued.
    raw_status = answer.get("status")
    status = normalise_status(raw_status) if isinstance(raw_status, str) else "queued"
    # The provider's answer comes without our callback URL (receiver.outbound.provider strips it).
    video = {k: v for k, v in answer.items() if k not in ("status", "object")}
    now = ctx.clock()
    first_poll = await ctx.scheduler.first_poll_at(body["model"], now)
    try:
        task = await ctx.store.finish_submit(created.pk, answer["id"], status, video, now, first_poll)
    except WrongVideo:
        raise UpstreamError("the provider answered with a video id that belongs to another task") from None
    except StoreUnavailable:
        # The provider has the task but we could not write its id: the row stays "submitting",
        # the sweep makes it unconfirmed, and its delivery adopts it.
        ctx.writes.failed()
        raise _unconfirmed_error(ProviderError("the answer could not be stored", status=200)) from None
    ctx.writes.ok()
    # From here the task exists: a read that fails now must not turn its answer into an error.
    fresh: TaskRow | None = None
    with contextlib.suppress(StoreUnavailable):
        # Workspace-wide deliveries that arrived before we knew this video id.
        for delivery in await ctx.store.unmatched_deliveries(answer["id"]):
            await reprocess(ctx, delivery)
        fresh = await ctx.store.task_by_pk(created.pk)
    ctx.wake_poller()  # a new schedule exists: let the poller recompute its next wake-up
    if task.terminal_at is not None:
        ctx.terminal_recorded()
    return json_response(task_view(fresh or task, body))


def _unconfirmed_error(exc: ProviderError) -> UpstreamError:
    why = "did not answer in time" if exc.timeout else f"failed us ({exc.message})"
    return UpstreamError(
        f"the provider {why}, and it may have accepted the task: it is kept, and a delivery "
        "about it will record it. A retry with the same Idempotency-Key is safe: it never submits "
        "the task a second time",
        status=504 if exc.timeout else 502,
        code="submit_unconfirmed",
    )


async def _unconfirmed(ctx: Context, pk: int, body: dict[str, Any], exc: ProviderError) -> Response:
    """Our submit's outcome is unknown: keep the task (and its callback token) unconfirmed. If a
    delivery already adopted it, the task is known after all: answer it."""
    task = await store_call(ctx, ctx.store.unconfirm_submit(pk, ctx.clock()))
    if task is not None and task.video_id is not None:
        log.warning("submit failed after the provider called back; the task is kept")
        return json_response(task_view(task, body))
    raise _unconfirmed_error(exc)


async def store_call(ctx: Context, awaitable: Any) -> Any:
    """Await a store write: StoreUnavailable becomes a 503, and the outcome feeds /readyz."""
    try:
        result = await awaitable
    except StoreUnavailable:
        ctx.writes.failed()
        raise Unavailable("the store cannot take writes right now; retry", code="store_unavailable") from None
    ctx.writes.ok()
    return result


@operation(
    Operation(
        "getVideo", "A video as stored, with the receiver block", tag="videos", answer=Video, errors=(404,)
    )
)
async def get_video(request: Request) -> Response:
    ctx = _ctx(request)
    authorize(request, ctx.settings.api_keys)
    task = await ctx.store.task_by_video(parse_id("video", request.path_params["video_id"]))
    if task is None:
        raise NotFound("no such video", param="id")
    files = await ctx.store.captures_of([task.pk])
    return json_response(task_view(task, files=files[task.pk]))


@operation(
    Operation(
        "listVideos",
        "Videos, newest first",
        tag="videos",
        answer=VideoList,
        query=VideoListQuery,
        errors=(400,),
    )
)
async def list_videos(request: Request) -> Response:
    ctx = _ctx(request)
    authorize(request, ctx.settings.api_keys)
    query = convert_query(request.query_params, VideoListQuery)
    page = await ctx.store.list_tasks(given(query.status), query.limit, given(query.after))
    # One read for the whole page's files, as a single read shows them.
    files = await ctx.store.captures_of([t.pk for t in page.rows]) if page.rows else {}
    data = [task_view(t, files=files.get(t.pk, [])) for t in page.rows]
    return json_response(list_body(data, page.has_more))


@operation(
    Operation(
        "listDeliveries",
        "Stored inbound deliveries, newest first",
        tag="deliveries",
        answer=DeliveryList,
        query=DeliveryListQuery,
        errors=(400,),
    )
)
async def list_deliveries(request: Request) -> Response:
    ctx = _ctx(request)
    authorize(request, ctx.settings.api_keys)
    query = convert_query(request.query_params, DeliveryListQuery)
    page = await ctx.store.list_deliveries(given(query.video_id) or None, query.limit, given(query.after))
    return json_response(list_body([delivery_view(d) for d in page.rows], page.has_more))


@operation(
    Operation(
        "replayDelivery",
        "Run a stored delivery through processing again",
        tag="deliveries",
        answer=DeliveryReplay,
        errors=(404, 409, 503),
    )
)
async def replay_delivery(request: Request) -> Response:
    ctx = _ctx(request)
    authorize(request, ctx.settings.api_keys)
    delivery = await ctx.store.get_delivery(parse_id("delivery", request.path_params["delivery_id"]))
    if delivery is None:
        raise NotFound("no such delivery", param="id")
    if delivery.pruned:
        raise Conflict(
            "the delivery's body was pruned (RECEIVER_RETENTION): there is nothing to replay",
            param="id",
            code="delivery_pruned",
        )
    result = await store_call(ctx, reprocess(ctx, delivery))
    fresh = await ctx.store.get_delivery(delivery.id)
    view = delivery_view(fresh or delivery)
    view["replay_outcome"] = result
    return json_response(view)


@operation(
    Operation(
        "getDeliveryHealth",
        "Per model: are the provider's deliveries arriving, with the evidence",
        tag="deliveries",
        answer=DeliveryHealthList,
    )
)
async def delivery_health(request: Request) -> Response:
    """Per model: are the provider's deliveries arriving, and the evidence for the judgement."""
    ctx = _ctx(request)
    authorize(request, ctx.settings.api_keys)
    data = [
        {
            "object": "delivery_health",
            "model": model,
            "state": health.state,
            "since": health.since,
            "checked_at": health.checked_at,
            "evidence": {
                "delivered": health.evidence.delivered,
                "missed": health.evidence.missed,
                "overdue": health.evidence.overdue,
                "expected_since_last_delivery": health.evidence.expected,
                "last_delivery_at": health.evidence.last_delivery_at,
            },
        }
        for model, health in ctx.scheduler.health().items()
    ]
    return json_response({"object": "list", "data": data, "has_more": False})


@operation(
    Operation(
        "getDelivery",
        "One stored inbound delivery as received (credentials redacted)",
        tag="deliveries",
        answer=Delivery,
        errors=(404,),
    )
)
async def get_delivery(request: Request) -> Response:
    ctx = _ctx(request)
    authorize(request, ctx.settings.api_keys)
    delivery = await ctx.store.get_delivery(parse_id("delivery", request.path_params["delivery_id"]))
    if delivery is None:
        raise NotFound("no such delivery", param="id")
    return json_response(delivery_view(delivery))


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
    ctx = _ctx(request)
    authorize(request, ctx.settings.api_keys)
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
    ctx = _ctx(request)
    authorize(request, ctx.settings.api_keys)
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
        Route("/v1/health/deliveries", delivery_health, methods=["GET"]),
        Route("/v1/videos", submit, methods=["POST"]),
        Route("/v1/videos", list_videos, methods=["GET"]),
        Route("/v1/videos/{video_id:str}", get_video, methods=["GET"]),
        Route("/v1/videos/{video_id:str}/content", get_video_content, methods=["GET"]),
        Route("/v1/deliveries", list_deliveries, methods=["GET"]),
        Route("/v1/deliveries/{delivery_id:str}", get_delivery, methods=["GET"]),
        Route("/v1/deliveries/{delivery_id:str}/replay", replay_delivery, methods=["POST"]),
        Route("/v1/stats", stats, methods=["GET"]),
        Route("/v1/health/subscribers", list_subscriber_health, methods=["GET"]),
    ]
