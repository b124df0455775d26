"""The inspection dashboard: a static page at `/` and its assets, shipped in the package."""

from __future__ import annotations

import html
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from receiver.context import Context

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
    "video-content": "/v1/videos/{video_id:str}/content",
}


def _features(request: Request) -> list[str]:
    paths = {getattr(r, "path", None) for r in request.app.routes}
    return [name for name, path in _OPTIONAL.items() if path in paths]


async def index(request: Request) -> Response:
    """The page shell. It holds no data: every figure comes from /v1 calls that need the key.
    It says whether a key is needed so the page can ask for one before its first call."""
    ctx: Context = request.app.state.ctx
    shell = resources.files("receiver").joinpath("static/index.html").read_text(encoding="utf-8")
    shell = shell.replace("{{auth}}", "required" if ctx.settings.api_keys else "open")
    shell = shell.replace("{{features}}", html.escape(" ".join(_features(request))))
    return Response(shell, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


class _Assets(StaticFiles):
    """The page's scripts and styles, with the same headers as the page."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Mount("/static", app=_Assets(packages=[("receiver", "static")]), name="static"),
    ]
