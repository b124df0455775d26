"""Cross-site rules for the API and the dashboard: the Host allow list, the Origin check, and the
content types a write may carry.

A browser lets any page send "simple" requests to any origin without asking first: a form post,
or a fetch with a text/plain body. Without these rules a page on another site could, in the
default no-key mode, subscribe itself, replay history to itself and submit paid tasks. So:

- a write under /v1 takes `application/json` (and `POST /v1/videos` multipart/form-data, as the
  OpenAI SDK sends it): anything else is 415, and JSON is exactly what a page cannot send to
  another origin without a CORS preflight, which we answer only for RECEIVER_CORS_ORIGINS;
- a request that changes something and names another origin (`Origin`, or
  `Sec-Fetch-Site: cross-site`) is 403, unless that origin is in RECEIVER_CORS_ORIGINS;
- a `Host` we do not answer for is 421: a name rebound to 127.0.0.1 by its owner's DNS makes the
  browser treat the receiver as that name's origin (DNS rebinding).

`/webhooks` never comes here (the ingest app takes it before the router), and `/healthz`,
`/readyz` and `/metrics` are left to balancers, which probe by address.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.errors import ApiError, Forbidden, Misdirected, UnsupportedMediaType

__all__ = ["CrossSiteGuard", "host_of", "origin_of"]

_UNCHECKED_HOST = frozenset({"/healthz", "/readyz", "/metrics"})
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_READ = frozenset(
    {b"host", b"origin", b"sec-fetch-site", b"content-type", b"content-length", b"transfer-encoding"}
)
_JSON = "application/json"
_MULTIPART = "multipart/form-data"


def host_of(value: str) -> str | None:
    """The host name of a Host header (`name`, `name:port`, `[v6]:port`), lowercased, without a
    trailing dot; None when it cannot be read."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        return value[1:end]
    name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    return name.rstrip(".") or None


def _netloc(host: str, port: int | None, scheme: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{shown}:{port}"


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` as a browser sends it in Origin (no default port), or None."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return f"{parts.scheme}://{_netloc(parts.hostname.rstrip('.'), port, parts.scheme)}"


class CrossSiteGuard:
    """ASGI middleware in front of the router (see the module's docstring for the rules)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        public_url: str,
        listen_host: str,
        allowed_hosts: Iterable[str] = (),
        cors_origins: Iterable[str] = (),
    ) -> None:
        self.app = app
        public = urlsplit(public_url)
        extra = {h.lower().rstrip(".") for h in allowed_hosts}
        self._any_host = "*" in extra
        self._hosts = frozenset(
            {"localhost", "127.0.0.1", "::1", listen_host.lower(), (public.hostname or "").lower(), *extra}
        )
        own = origin_of(public_url)
        self._own_origins = frozenset({own} if own else ())
        self._cors = frozenset(cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers: dict[bytes, bytes] = {}
            for name, value in scope["headers"]:
                if name in _READ:
                    headers.setdefault(name, value)
            refusal = self._refusal(scope, headers)
            if refusal is not None:
                await _answer(refusal, send, close=_has_body(headers))
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> ApiError | None:
        path: str = scope["path"]
        method: str = scope["method"]
        raw_host = headers.get(b"host")
        if path not in _UNCHECKED_HOST and raw_host is not None and not self._any_host:
            host = host_of(raw_host.decode("latin-1"))
            if host not in self._hosts:
                return Misdirected(
                    "this receiver does not answer for that Host; add it to RECEIVER_ALLOWED_HOSTS",
                    param="Host",
                )
        if method in _WRITES or method == "OPTIONS":
            refusal = self._origin_refusal(headers, raw_host)
            if refusal is not None:
                return refusal
        if method in _WRITES and path.startswith("/v1/") and _has_body(headers):
            media = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower().decode("latin-1")
            allowed = (_JSON, _MULTIPART) if method == "POST" and path == "/v1/videos" else (_JSON,)
            if media not in allowed:
                shown = media or "none"
                return UnsupportedMediaType(
                    f"Content-Type {shown[:100]!r} is not accepted here; send {' or '.join(allowed)}",
                    param="Content-Type",
                )
        return None

    def _origin_refusal(self, headers: dict[bytes, bytes], raw_host: bytes | None) -> ApiError | None:
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1").strip()
            if text in self._cors or self._same_origin(text, raw_host):
                return None
            return _cross_origin(text)
        if headers.get(b"sec-fetch-site", b"").strip().lower() == b"cross-site":
            return _cross_origin(None)
        return None

    def _same_origin(self, origin: str, raw_host: bytes | None) -> bool:
        normal = origin_of(origin)  # "null" and anything unreadable are another origin
        if normal is None:
            return False
        if normal in self._own_origins:
            return True
        if raw_host is None:
            return False
        # The Host this request came to (already on the allow list): the page's own origin has
        # it, whatever the scheme a proxy in front of us terminated.
        scheme = normal.split("://", 1)[0]
        asked = origin_of(f"{scheme}://{raw_host.decode('latin-1').strip()}")
        return asked == normal


def _has_body(headers: dict[bytes, bytes]) -> bool:
    if b"transfer-encoding" in headers:
        return True
    length = headers.get(b"content-length")
    return length is not None and length.strip() not in (b"", b"0")


def _cross_origin(origin: str | None) -> Forbidden:
    named = f"origin {origin[:200]!r}" if origin is not None else "a cross-site page"
    return Forbidden(
        f"a request that changes something from {named} is refused; "
        "add the origin to RECEIVER_CORS_ORIGINS to allow it",
        param="Origin",
        code="cross_origin",
    )


async def _answer(error: ApiError, send: Send, *, close: bool) -> None:
    body = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"vary", b"Origin"),
    ]
    if close:  # the body we refused to read may still be on its way
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
