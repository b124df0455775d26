"""GET /v1/events/stream: events as Server-Sent Events, resumed from Last-Event-ID."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from receiver.context import Context
from receiver.errors import InvalidRequest, Unavailable, UnknownCursor
from receiver.routes.http import (
    authorized,
)
from receiver.routes.openapi import Header, Operation, operation
from receiver.routes.schemas import (
    StreamQuery,
    convert_query,
    given,
)
from receiver.rules.ids import parse_id
from receiver.workers.dispatcher import event_body

__all__ = ["routes"]


_STREAM_BATCH = 100


_KEEPALIVE = 15.0


_RECHECK = 1.0


# Seconds a refused stream reader is asked to wait: a slot frees only when another reader leaves.
_STREAM_RETRY_AFTER = 30


@operation(
    Operation(
        "streamEvents",
        "New events as Server-Sent Events; Last-Event-ID resumes",
        tag="events",
        media="text/event-stream",
        query=StreamQuery,
        headers=(Header("Last-Event-ID", "Resume after this event id"),),
        errors=(400, 503),
    )
)
async def stream_events(request: Request) -> Response:
    """Server-Sent Events of new events; Last-Event-ID (header or ?last_event_id) resumes.

    A stream holds its connection for as long as the reader likes, so this process serves at
    most RECEIVER_MAX_STREAMS of them and never more than half of RECEIVER_MAX_CONNECTIONS: the
    connections a stream cannot take are the ones deliveries always find.
    """
    ctx = authorized(request)
    query = convert_query(request.query_params, StreamQuery)
    last = request.headers.get("last-event-id") or given(query.last_event_id)
    if last is not None:
        parse_id("event", last, "Last-Event-ID")
    if last is None:
        # A fresh reader starts from now: only events recorded after it connected.
        newest = await ctx.store.list_events(None, None, 1, None)
        last = newest.rows[0].id if newest.rows else None
    else:
        try:
            await ctx.store.events_after(last, 1)
        except UnknownCursor:
            raise InvalidRequest("Last-Event-ID names no event", param="Last-Event-ID") from None

    async def frames() -> AsyncIterator[bytes]:
        cursor = last
        yield b": connected\n\n"
        quiet = 0.0
        while True:
            signal = ctx.new_events
            rows = await ctx.store.events_after(cursor, _STREAM_BATCH)
            for row in rows:
                yield b"id: %s\nevent: %s\ndata: %s\n\n" % (
                    row.id.encode(),
                    row.type.encode(),
                    event_body(row),
                )
                cursor = row.id
            if len(rows) == _STREAM_BATCH:
                continue
            if rows:
                quiet = 0.0
            # Woken by a new event here or (through the store) in another process; a short
            # timeout as well, for what another process recorded while the wake-up was lost
            # and for events that became readable only when an older transaction ended.
            try:
                await asyncio.wait_for(signal.wait(), timeout=_RECHECK)
            except TimeoutError:
                quiet += _RECHECK
                if quiet >= _KEEPALIVE:
                    quiet = 0.0
                    yield b": keep-alive\n\n"

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    cap = min(ctx.settings.max_streams, ctx.settings.max_connections // 2)
    # Checked and taken with no await between: concurrent readers cannot all pass at once.
    if ctx.open_streams >= cap:
        raise Unavailable(
            f"{cap} event streams are open, the most this process serves at once",
            code="too_many_streams",
            headers={"retry-after": str(_STREAM_RETRY_AFTER), "connection": "close"},
        )
    ctx.open_streams += 1
    return _Stream(ctx, frames(), headers)


class _Stream(StreamingResponse):
    """An event stream that gives its slot back when it ends, however it ends (the reader
    leaves, the app stops, a store error): the finally is entered at the first step of the call."""

    def __init__(self, ctx: Context, frames: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        super().__init__(frames, media_type="text/event-stream", headers=headers)
        self._ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._ctx.open_streams -= 1


def routes() -> list[Route]:
    # Before /v1/events/{event_id}, which would otherwise take "stream" for an id.
    return [Route("/v1/events/stream", stream_events, methods=["GET"])]
