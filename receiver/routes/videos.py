"""/v1/videos: submit a task to the provider, read it, list tasks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.context import Context
from receiver.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    StoreUnavailable,
    UpstreamError,
    WrongVideo,
    to_api_error,
)
from receiver.outbound.provider import ProviderError
from receiver.routes.content import get_video_content
from receiver.routes.forms import is_multipart, read_form
from receiver.routes.http import (
    authorize,
    authorized,
    check_outbound_name,
    check_outbound_url,
    json_response,
    read_json_object,
    store_call,
)
from receiver.routes.openapi import Header, Operation, operation
from receiver.routes.schemas import (
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
from receiver.routes.views import list_body, task_view
from receiver.routes.webhooks import reprocess
from receiver.rules.decide import ORPHAN_GRACE
from receiver.rules.ids import parse_id
from receiver.rules.payloads import normalise_status
from receiver.rules.records import NewTask, TaskRow
from receiver.rules.redact import strip_callbacks, strip_text
from receiver.settings import Settings

__all__ = ["routes"]

log = logging.getLogger("receiver.routes.videos")


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
    ctx: Context = request.app.state.ctx
    scope = authorize(request, ctx.settings.api_keys)  # the key also scopes the Idempotency-Key
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


@operation(
    Operation(
        "getVideo", "A video as stored, with the receiver block", tag="videos", answer=Video, errors=(404,)
    )
)
async def get_video(request: Request) -> Response:
    ctx = authorized(request)
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
    ctx = authorized(request)
    query = convert_query(request.query_params, VideoListQuery)
    page = await ctx.store.list_tasks(given(query.status), query.limit, given(query.after))
    # One read for the whole page's files, as a single read shows them.
    files = await ctx.store.captures_of([t.pk for t in page.rows]) if page.rows else {}
    data = [task_view(t, files=files.get(t.pk, [])) for t in page.rows]
    return json_response(list_body(data, page.has_more))


def routes() -> list[Route]:
    return [
        Route("/v1/videos", submit, methods=["POST"]),
        Route("/v1/videos", list_videos, methods=["GET"]),
        Route("/v1/videos/{video_id:str}", get_video, methods=["GET"]),
        Route("/v1/videos/{video_id:str}/content", get_video_content, methods=["GET"]),
    ]
