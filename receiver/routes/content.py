"""GET /v1/videos/{id}/content: a task's result file, as OpenAI's download_content serves it.

The kept copy when there is one (Range honoured). While its capture is still pending, the
provider's own file, fetched for this request through the capturer's address guard, budget and
decoding (receiver.workers.capture), so a client that downloads the moment a task completes gets the
file, not a 404. Either way the headers keep the file from running in a browser.
"""

from __future__ import annotations

import json
import logging
import mimetypes
from urllib.parse import quote

import aiohttp
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from receiver.context import Context
from receiver.errors import CallError, Gone, InvalidRequest, NotFound, UpstreamError
from receiver.media.base import MediaStore
from receiver.routes.http import authorize
from receiver.routes.openapi import Operation, operation
from receiver.routes.schemas import VideoContentQuery, convert_query
from receiver.rules.records import CaptureRow
from receiver.workers.capture import Capturer, Refused

__all__ = ["RangeErrorsAsJson", "file_headers", "get_video_content"]

log = logging.getLogger("receiver.routes.content")

_RASTER_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/avif"})


def file_headers(content_type: str | None, video_id: str) -> tuple[str, str, dict[str, str]]:
    """The media type to serve a file under, its file name, and the headers that go with it (pure).

    The provider chose the type. Only a video or a raster image may show in the browser and keep
    its type; anything else (HTML, SVG, a script) is a download under a type no browser runs, so
    no page on our origin can execute it, even as a <script src>."""
    stored = content_type or "application/octet-stream"
    essence = stored.split(";", 1)[0].strip().lower()
    inline = essence.startswith("video/") or essence in _RASTER_IMAGES
    filename = f"{video_id}{mimetypes.guess_extension(essence) or ''}"
    quoted = quote(filename)
    named = f'filename="{filename}"' if quoted == filename else f"filename*=utf-8''{quoted}"
    return (
        stored if inline else "application/octet-stream",
        filename,
        {
            "content-disposition": f"{'inline' if inline else 'attachment'}; {named}",
            "x-content-type-options": "nosniff",
            "content-security-policy": "sandbox; default-src 'none'",
        },
    )


@operation(
    Operation(
        "getVideoContent",
        "A result file (Range honoured once kept), as OpenAI's download_content",
        tag="videos",
        media="*/*",  # the file's own type, as the provider served it (video/mp4, image/png, ...)
        query=VideoContentQuery,
        errors=(400, 404, 410, 416, 502),
        ranges=True,
    )
)
async def get_video_content(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    authorize(request, ctx.settings.api_keys)
    query = convert_query(request.query_params, VideoContentQuery)
    task = await ctx.store.task_by_video(request.path_params["video_id"])
    if task is None or task.video_id is None:
        raise NotFound("no such video", param="id")
    files = {f.variant: f for f in (await ctx.store.captures_of([task.pk]))[task.pk]}
    row = files.get(query.variant)
    if row is None:
        if task.status != "completed":
            message = f"the video is not completed yet (status {task.status}): its files come with its result"
        else:
            named = ", ".join(sorted(files)) or "none"
            message = f"the result names no {query.variant} file (it names: {named})"
        raise NotFound(message, param="variant", code="content_not_kept")
    if row.status == "expired":
        raise Gone(
            f"the {query.variant} file was deleted when its retention (RECEIVER_MEDIA_RETENTION) ended",
            param="variant",
            code="content_expired",
        )
    if row.status == "pending":
        return _Relay(request.app.state.capturer, row, task.video_id)
    if row.status != "kept" or row.key is None:
        why = f": {row.error}" if row.error else ""
        raise NotFound(
            f"keeping the {query.variant} file failed{why}", param="variant", code="content_not_kept"
        )
    media_type, filename, headers = file_headers(row.content_type, task.video_id)
    media: MediaStore = request.app.state.media
    answer = await media.response(row.key, media_type, filename)
    if answer is None:
        raise NotFound(
            "the kept file is missing from the media store", param="variant", code="content_missing"
        )
    answer.headers.update(headers)
    return RangeErrorsAsJson(answer)


class RangeErrorsAsJson(Response):
    """A file answer whose own Range refusals (400 malformed, 416 not satisfiable, both plain
    text) take the error shape every other answer has."""

    def __init__(self, inner: Response) -> None:
        super().__init__()
        self._inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        replaced = False

        async def shaped(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] in (400, 416):
                replaced = True
                status = message["status"]
                error = InvalidRequest(
                    "the Range header is malformed" if status == 400 else "the Range cannot be satisfied",
                    param="Range",
                    code="invalid_range" if status == 400 else "range_not_satisfiable",
                    status=status,
                )
                body = json.dumps(error.body()).encode()
                headers = [(k, v) for k, v in message["headers"] if k.lower() == b"content-range"]
                headers += [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            elif not replaced:
                await send(message)

        await self._inner(scope, receive, shaped)


class _Relay(Response):
    """A file whose capture is pending, fetched from its URL for this one request: through the
    capturer's address guard, budget (total deadline, stall, size cap) and decoding, streamed
    and never held whole. Range is not honoured until the file is kept (a 200 answers it)."""

    def __init__(self, capturer: Capturer, row: CaptureRow, video_id: str) -> None:
        super().__init__()
        self._capturer = capturer
        self._row = row
        self._video_id = video_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        budget = self._capturer.budget()
        started = False
        try:
            async with budget.bound(), self._capturer.fetch(self._row, budget) as (response, body):
                media_type, _, headers = file_headers(response.headers.get("content-type"), self._video_id)
                raw = [(b"content-type", media_type.encode("latin-1"))]
                raw += [(k.encode(), v.encode("latin-1")) for k, v in headers.items()]
                if not body.encoded and response.content_length is not None:
                    raw.append((b"content-length", str(response.content_length).encode()))
                await send({"type": "http.response.start", "status": 200, "headers": raw})
                started = True
                async for chunk in body:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except (Refused, CallError, aiohttp.ClientError, OSError, ValueError) as exc:
            if started:
                # The head is out: all we can do is end the answer short, which the client sees.
                log.warning(
                    "content: relaying %s of %s broke off (%s)",
                    self._row.variant,
                    self._video_id,
                    type(exc).__name__,
                )
                return
            error = UpstreamError(
                f"the {self._row.variant} file is not kept yet, and its URL could not be read now "
                f"({str(exc)[:200] or type(exc).__name__}); retry shortly",
                code="content_unavailable",
            )
            body_bytes = json.dumps(error.body()).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": error.status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body_bytes)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body_bytes})
