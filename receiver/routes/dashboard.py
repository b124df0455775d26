"""The inspection dashboard: a static page at `/` and its assets, shipped in the package."""

from __future__ import annotations

import hashlib
import html
import re
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from receiver.context import Context
from receiver.errors import NotFound
from receiver.routes.openapi import Header, Operation, operation

__all__ = ["SECURITY_HEADERS", "routes"]

# The page runs only its own script and style and talks only to this origin; no inline code.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}

# Routes the page uses when this receiver has them (built by other issues; absent: the page
# leaves those panels out instead of calling a route that answers 404).
_OPTIONAL = {
    "health-deliveries": "/v1/health/deliveries",
    "video-content": "/v1/videos/{}/content",
}


def _features(request: Request) -> list[str]:
    paths = {re.sub(r"{[^}]*}", "{}", getattr(r, "path", "")) for r in request.app.routes}
    return [name for name, path in _OPTIONAL.items() if path in paths]


@operation(
    Operation(
        "getDashboard",
        "The inspection page (HTML); its figures come from the /v1 routes, which need the key",
        tag="dashboard",
        media="text/html",
        authenticated=False,
    )
)
async def index(request: Request) -> Response:
    """The page shell. It holds no data: every figure comes from /v1 calls that need the key.
    It says whether a key is needed so the page can ask for one before its first call."""
    ctx: Context = request.app.state.ctx
    shell = resources.files("receiver").joinpath("static/index.html").read_text(encoding="utf-8")
    shell = shell.replace("{{auth}}", "required" if ctx.settings.api_keys else "open")
    shell = shell.replace("{{features}}", html.escape(" ".join(_features(request))))
    return Response(shell, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


_ANY = {"type": "string"}
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}


@operation(
    Operation(
        "getDashboardAsset",
        "The page's script or stylesheet, revalidated by ETag",
        tag="dashboard",
        media=tuple(sorted({media.split(";")[0] for media in _ASSETS.values()})),
        # Any value: one that names no current ETag gets the file.
        headers=(Header("If-None-Match", "ETags of copies held: 304 while one is current", _ANY),),
        errors=(404,),
        authenticated=False,
        other=((304, None),),
        path=(("name", {"type": "string", "enum": sorted(_ASSETS)}),),
    )
)
async def asset(request: Request) -> Response:
    """The page's script and stylesheet, under the page's headers; revalidated by ETag so an
    upgraded receiver is never shown with a stale script."""
    name = request.path_params["name"]
    media = _ASSETS.get(name)
    if media is None:
        raise NotFound("no such asset", param="name")
    body = resources.files("receiver").joinpath("static", name).read_bytes()
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {**SECURITY_HEADERS, "etag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media, headers=headers)


def routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Route("/static/{name:str}", asset, methods=["GET", "HEAD"]),
    ]
