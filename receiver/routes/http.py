"""Small HTTP helpers shared by the routes: bounded body reads, JSON answers, auth, the URL checks
of what a client asks us to send to, and store writes that answer 503."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from receiver.context import Context
from receiver.errors import InvalidRequest, PayloadTooLarge, StoreUnavailable, Unauthorized, Unavailable
from receiver.outbound.addresses import OutboundURLError, address_allowed, check_url, host_address
from receiver.rules import jsonpolicy
from receiver.settings import Settings

__all__ = [
    "authorize",
    "authorized",
    "check_outbound_name",
    "check_outbound_url",
    "json_response",
    "read_asgi_body",
    "read_body",
    "read_json_object",
    "store_call",
]


_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}", re.ASCII)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def read_asgi_body(receive: Receive, content_length: str | None, cap: int) -> bytes:
    """The whole body, or 413 as soon as it passes `cap` (whatever Content-Length claims)."""
    if content_length is not None:
        if not _CONTENT_LENGTH.fullmatch(content_length):
            raise InvalidRequest("Content-Length is not a number", code="bad_content_length")
        if int(content_length) > cap:
            raise PayloadTooLarge(f"body larger than {cap} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("client disconnected before the body ended")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > cap:
                raise PayloadTooLarge(f"body larger than {cap} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_body(request: Request, cap: int) -> bytes:
    return await read_asgi_body(request.receive, request.headers.get("content-length"), cap)


async def read_json_object(request: Request, cap: int) -> dict[str, Any]:
    body = await read_body(request, cap)
    if not body.strip():
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    try:
        value = jsonpolicy.loads(body)
    except jsonpolicy.JSONPolicyError as exc:
        raise InvalidRequest(f"request body is not acceptable JSON: {exc}", code="invalid_json") from None
    if not isinstance(value, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    return value


def authorize(request: Request, api_keys: tuple[str, ...]) -> str:
    """Check the bearer key when keys are configured; return the idempotency scope."""
    if not api_keys:
        return ""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer API key", code="missing_api_key")
    matched = False
    for key in api_keys:
        # Compare against every key so the time taken says nothing about which one matched.
        matched |= hmac.compare_digest(token.encode(), key.encode())
    if not matched:
        raise Unauthorized("invalid API key", code="invalid_api_key")
    return hashlib.sha256(token.encode()).hexdigest()


RESOLVE_TIMEOUT = 2.0  # seconds a subscribe-time lookup of a URL's host name may take


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


async def store_call(ctx: Context, awaitable: Any) -> Any:
    """Await a store write: StoreUnavailable becomes a 503, and the outcome feeds /readyz."""
    try:
        result = await awaitable
    except StoreUnavailable:
        ctx.writes.failed()
        raise Unavailable("the store cannot take writes right now; retry", code="store_unavailable") from None
    ctx.writes.ok()
    return result


def authorized(request: Request) -> Context:
    """What the app shares with its routes (receiver.context), once the request has shown an API
    key (401 otherwise): every /v1 route's first step."""
    ctx: Context = request.app.state.ctx
    authorize(request, ctx.settings.api_keys)
    return ctx
