"""/webhooks routes: cap the body, verify the raw bytes, pick the dedupe key, store, then ack."""

from __future__ import annotations

import hashlib
import json
import logging
import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.context import Context
from receiver.errors import ApiError, InvalidRequest, NotFound, Unauthorized, Unavailable
from receiver.http import json_response, read_body
from receiver.payloads import PayloadError, VideoUpdate, normalise
from receiver.signatures import (
    STANDARD_HEADER_FAMILIES,
    NoSignature,
    SignatureError,
    Verification,
    verify,
)
from store import DeliveryRow, NewDelivery, StoreUnavailable, UnknownToken, WrongVideo

__all__ = ["dedupe_key", "redact", "reprocess", "routes"]

log = logging.getLogger("receiver.ingest")

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})


def redact(headers: dict[str, str]) -> dict[str, str]:
    return {k: ("[redacted]" if k in _SECRET_HEADERS else v) for k, v in headers.items()}


def dedupe_key(headers: dict[str, str], verification: Verification, update: VideoUpdate, body: bytes) -> str:
    """webhook-id (or a twin), the OpenRouter idempotency key, the event id, else a body hash."""
    for prefix in STANDARD_HEADER_FAMILIES:
        value = headers.get(prefix + "id")
        if value:
            return "msg:" + value
    value = headers.get("x-openrouter-idempotency-key")
    if value:
        return "orik:" + value[:256]
    if update.event_id:
        return "evt:" + update.event_id
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _parse(body: bytes) -> VideoUpdate:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("body is not JSON", code="invalid_json") from None
    try:
        return normalise(parsed)
    except PayloadError as exc:
        raise InvalidRequest(str(exc), code="invalid_payload") from None


async def _ingest(request: Request, token: str | None) -> tuple[Response, str]:
    ctx: Context = request.app.state.ctx
    settings = ctx.settings
    if token is not None and not _TOKEN.match(token):
        raise NotFound("unknown callback URL", code="unknown_token")
    body = await read_body(request, settings.max_body_bytes)
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}
    now = ctx.clock()
    try:
        verification = verify(
            headers, body, ctx.webhook_keys, now=int(now), tolerance=settings.signature_tolerance
        )
    except NoSignature:
        if token is None or not settings.allow_unsigned:
            raise Unauthorized("missing webhook signature", code="missing_signature") from None
        verification = Verification("unsigned", None, None)
    except SignatureError as exc:
        raise Unauthorized(f"invalid webhook signature: {exc}", code="invalid_signature") from None
    update = _parse(body)
    if token is None and update.actionable and update.video_id is None:
        raise InvalidRequest("body names no video", code="invalid_payload")
    unsigned = verification.scheme == "unsigned"
    delivery = NewDelivery(
        dedupe_key=dedupe_key(headers, verification, update, body),
        route="task" if token is not None else "workspace",
        token_hash=hashlib.sha256(token.encode()).hexdigest() if token is not None else None,
        video_id=update.video_id,
        verified_by=verification.scheme,
        headers=redact(headers),
        body=body,
        event_type=update.event_type,
        status=update.status,
        video=update.video,
        actionable=update.actionable,
        needs_confirm=unsigned or update.thin,
        received_at=now,
        next_poll_at=now + settings.poll_after,
    )
    try:
        result = await ctx.store.record_delivery(delivery)
    except UnknownToken:
        raise NotFound("unknown callback URL", code="unknown_token") from None
    except WrongVideo:
        raise InvalidRequest("this callback URL belongs to another video", code="wrong_video") from None
    except StoreUnavailable:
        raise Unavailable("cannot store the delivery right now; retry", code="store_unavailable") from None
    if result.outcome == "pending_confirm":
        ctx.wake_poller()
    if result.terminal:
        ctx.terminal_recorded(result.sends)
    outcome = "duplicate_delivery" if result.duplicate else result.outcome
    return json_response({"id": result.id, "duplicate": result.duplicate}), outcome


async def _counted(request: Request, token: str | None) -> Response:
    counter = request.app.state.ctx.metrics.deliveries
    try:
        response, outcome = await _ingest(request, token)
    except ApiError as exc:
        counter.labels(outcome=f"rejected_{exc.code}").inc()
        raise
    counter.labels(outcome=outcome).inc()
    return response


async def task_webhook(request: Request) -> Response:
    return await _counted(request, request.path_params["token"])


async def workspace_webhook(request: Request) -> Response:
    return await _counted(request, None)


async def reprocess(ctx: Context, delivery: DeliveryRow) -> str:
    """Run a stored delivery through the transition function again (replay, late match)."""
    try:
        update = normalise(json.loads(delivery.body))
    except (ValueError, UnicodeDecodeError, PayloadError):
        return delivery.outcome
    if not update.actionable:
        return "ignored"
    result = await ctx.store.reapply_delivery(
        delivery.id,
        update.status,
        update.video,
        delivery.verified_by == "unsigned" or update.thin,
        ctx.clock(),
    )
    if result.outcome == "pending_confirm":
        ctx.wake_poller()
    if result.terminal:
        ctx.terminal_recorded(result.sends)
    return result.outcome


def routes() -> list[Route]:
    return [
        Route("/webhooks", workspace_webhook, methods=["POST"]),
        Route("/webhooks/{token:str}", task_webhook, methods=["POST"]),
    ]
