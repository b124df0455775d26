"""/webhooks routes: cap the body, verify the raw bytes, pick the dedupe key, store, then ack."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable

from starlette.types import Receive, Scope, Send

from receiver.context import Context
from receiver.errors import (
    ApiError,
    InvalidRequest,
    JSONPolicyError,
    NoSignature,
    NotFound,
    PayloadError,
    ReceiverError,
    StoreUnavailable,
    to_api_error,
)
from receiver.routes.http import read_asgi_body
from receiver.rules import jsonpolicy
from receiver.rules.payloads import VideoUpdate, normalise
from receiver.rules.records import DeliveryRow, NewDelivery
from receiver.rules.redact import REDACTED, redact_headers, strip_callbacks
from receiver.rules.signatures import STANDARD_HEADER_FAMILIES, Verification, verify

__all__ = ["IngestApp", "dedupe_key", "ingest", "reprocess"]

log = logging.getLogger("receiver.routes.webhooks")

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


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


def _parse(body: bytes, token: str | None) -> VideoUpdate:
    """The JSON policy, then the payload shapes; the video to store never holds our callback URL.
    JSONPolicyError or PayloadError (400s, receiver.errors) when the body is neither."""
    update = normalise(jsonpolicy.loads(body))
    if update.video is not None:
        update.video = strip_callbacks(update.video, (token,) if token else ())
    return update


async def ingest(ctx: Context, scope: Scope, receive: Receive, token: str | None) -> tuple[bytes, str]:
    """Take one delivery: the answer's body and the outcome to count (a ReceiverError, which
    receiver.errors.to_api_error turns into the 4xx/5xx, when it is refused)."""
    settings = ctx.settings
    if token is not None and not _TOKEN.match(token):
        raise NotFound("unknown callback URL", code="unknown_token")
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    body = await read_asgi_body(receive, headers.get("content-length"), settings.max_body_bytes)
    now = ctx.clock()
    try:
        verification = verify(
            headers, body, ctx.webhook_keys, now=int(now), tolerance=settings.signature_tolerance
        )
    except NoSignature:
        if token is None or not settings.allow_unsigned:
            raise
        verification = Verification("unsigned", None, None)
    update = _parse(body, token)
    if token is None and update.actionable and update.video_id is None:
        raise InvalidRequest("body names no video", code="invalid_payload")
    unsigned = verification.scheme == "unsigned"
    if token is not None and token.encode() in body:
        # Kept as received, except for our own credential echoed back: the stored body is shown
        # by GET /v1/deliveries, and the token cannot be recognised there without knowing it.
        body = body.replace(token.encode(), REDACTED.encode())
    delivery = NewDelivery(
        dedupe_key=dedupe_key(headers, verification, update, body),
        route="task" if token is not None else "workspace",
        token_hash=hashlib.sha256(token.encode()).hexdigest() if token is not None else None,
        video_id=update.video_id,
        verified_by=verification.scheme,
        headers=redact_headers(headers),
        body=body,
        event_type=update.event_type,
        status=update.status,
        video=update.video,
        actionable=update.actionable,
        needs_confirm=unsigned or update.thin,
        received_at=now,
        next_poll_at=now + settings.poll_after,
        key_id=verification.key_id,
    )
    try:
        result = await ctx.store.record_delivery(delivery)
    except StoreUnavailable:
        ctx.writes.failed()
        raise
    ctx.writes.ok()
    if result.outcome == "pending_confirm":
        ctx.wake_poller()
    if result.terminal:
        ctx.terminal_recorded(result.sends)
    answer = b'{"id":"%s","duplicate":%s}' % (result.id.encode(), b"true" if result.duplicate else b"false")
    return answer, "duplicate_delivery" if result.duplicate else result.outcome


class IngestApp:
    """POST /webhooks and /webhooks/{token} as a bare ASGI app.

    The acknowledgement path is the hot one (providers burst and time out), so it skips the
    router and the middleware stack; errors take the same JSON shape as everywhere else.
    """

    def __init__(self, context: Callable[[], Context]) -> None:
        self._context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = self._context()
        path: str = scope["path"]
        extra: list[tuple[bytes, bytes]] = []
        try:
            token = path[len("/webhooks/") :] if path.startswith("/webhooks/") else None
            if token is not None and "/" in token:
                raise NotFound("not found", code="not_found")
            if scope["method"] != "POST":
                extra.append((b"allow", b"POST"))
                raise ApiError("method not allowed", status=405, code="method_not_allowed")
            body, outcome = await ingest(ctx, scope, receive, token)
            status = 200
        except ReceiverError as exc:
            error = to_api_error(exc)
            status, outcome = error.status, f"rejected_{error.code}"
            ctx.refused.note(error.code)
            body = json.dumps(error.body()).encode()
            extra += [(k.encode(), v.encode()) for k, v in error.headers.items()]
        except Exception:
            log.exception("unhandled error taking a delivery")
            status, outcome = 500, "error"
            body = json.dumps(ApiError("internal error").body()).encode()
        ctx.metrics.delivery(outcome)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def reprocess(ctx: Context, delivery: DeliveryRow) -> str:
    """Run a stored delivery through the transition function again (replay, late match)."""
    try:
        update = _parse(delivery.body, None)
    except (JSONPolicyError, PayloadError):
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
