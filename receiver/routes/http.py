"""Small HTTP helpers shared by the routes: bounded body reads, JSON answers, auth, paging."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from receiver.errors import InvalidRequest, PayloadTooLarge, Unauthorized
from receiver.rules import jsonpolicy

__all__ = [
    "authorize",
    "json_response",
    "parse_retry_after",
    "read_asgi_body",
    "read_body",
    "read_json_object",
]


_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}", re.ASCII)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the delay form), or None when absent or not a number."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


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
