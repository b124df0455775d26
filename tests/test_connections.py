"""The connection budget, over raw loopback sockets: a body deadline, classes of connections at
the cap (stuck, then idle, go first), and a cap on event streams, so deliveries always find room."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import tomllib
from collections.abc import AsyncIterator
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.requirements import Requirement
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from receiver.server import ConnectionLimits, guarded_protocol
from receiver.settings import Settings, SettingsError
from receiver.simulator.provider import SimConfig
from tests.conftest import SECRET, Stack, StackFactory, serve, sign_headers, wait_until

pytestmark = pytest.mark.anyio

TABLES = ("tasks", "deliveries", "events", "subscriptions", "outbox")
SLOW_TASKS = SimConfig(secret=SECRET, duration_median=3600)
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def counts(stack: Stack) -> dict[str, int]:
    with sqlite3.connect(stack.settings.database_url[len("sqlite:///") :]) as conn:
        return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@contextlib.asynccontextmanager
async def connections(url: str, n: int) -> AsyncIterator[list[Connection]]:
    """`n` raw connections, closed on the way out whatever the server did with them."""
    opened: list[Connection] = []
    try:
        for _ in range(n):
            opened.append(await asyncio.open_connection("127.0.0.1", port_of(url)))
        yield opened
    finally:
        for _, writer in opened:
            writer.close()
        for _, writer in opened:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def read_all(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes (or resets) the connection; fails after
    `within` s."""
    data = b""
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(1 << 16):
                data += chunk
    return data


async def gone(reader: asyncio.StreamReader) -> bool:
    """Whether the server has closed (or reset) this connection, looking without waiting."""
    if reader.at_eof():
        return True
    try:
        await asyncio.wait_for(reader.read(1 << 16), timeout=0.01)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return reader.at_eof()


async def read_answer(reader: asyncio.StreamReader, within: float = 5.0) -> tuple[bytes, bytes]:
    """One answer's head and its Content-Length body, leaving the connection open."""
    async with asyncio.timeout(within):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        return head, await reader.readexactly(length)


def error_of(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) == {"type", "code", "message", "param"}
    return error


async def signed_delivery(stack: Stack, video_id: str, msg_id: str, timeout: float) -> httpx.Response:
    """A real provider's delivery on a fresh connection of its own."""
    body = json.dumps({"id": video_id, "object": "video", "status": "in_progress"}).encode()
    async with httpx.AsyncClient(timeout=timeout) as fresh:
        return await fresh.post(
            f"{stack.url}/webhooks", content=body, headers=sign_headers(body, msg_id=msg_id)
        )


SLOW_BODY = (
    b"POST /webhooks HTTP/1.1\r\nhost: localhost\r\n"
    b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"
)


# -- settings ---------------------------------------------------------------------------------


def test_body_timeout_and_max_streams_settings() -> None:
    defaults = Settings.from_env({})
    assert (defaults.body_timeout, defaults.max_streams) == (30.0, 100)
    assert ConnectionLimits.from_settings(defaults).body_timeout == 30.0
    chosen = Settings.from_env({"RECEIVER_BODY_TIMEOUT": "7", "RECEIVER_MAX_STREAMS": "3"})
    assert (chosen.body_timeout, chosen.max_streams) == (7.0, 3)
    assert ConnectionLimits.from_settings(chosen).body_timeout == 7.0
    for name, value in (
        ("RECEIVER_BODY_TIMEOUT", "0"),
        ("RECEIVER_BODY_TIMEOUT", "1.5s"),
        ("RECEIVER_MAX_STREAMS", "0"),
        ("RECEIVER_MAX_STREAMS", "many"),
    ):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})


# -- the body deadline ------------------------------------------------------------------------


async def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(
    make_stack: StackFactory,
) -> None:
    async with make_stack(SLOW_TASKS, body_timeout=1.0) as stack:
        before = counts(stack)
        for path in ("/webhooks", "/v1/videos"):
            async with connections(stack.url, 1) as [(reader, writer)]:
                writer.write(SLOW_BODY.replace(b"/webhooks", path.encode(), 1))
                answer = await read_all(reader, 10)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b"connection: close" in head.lower()
            assert error_of(body)["code"] == "body_timeout"
        # A body that keeps trickling is held to the same deadline: it is for the whole body,
        # not for each read.
        async with connections(stack.url, 1) as [(reader, writer)]:
            writer.write(SLOW_BODY)
            answer = b""
            for _ in range(100):  # bounded: 100 bytes at most, over about 10 s at most
                try:
                    writer.write(b" ")
                    await writer.drain()
                except ConnectionError:
                    break
                with contextlib.suppress(TimeoutError):
                    # wait-ok: paces a client that trickles its body; the server's answer ends it
                    answer += await asyncio.wait_for(reader.read(1 << 16), timeout=0.1)
                if b"\r\n\r\n" in answer:
                    break
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert error_of(answer.partition(b"\r\n\r\n")[2] or await read_all(reader, 5))["code"] == (
                "body_timeout"
            )
        assert (await stack.client.get(f"{stack.url}/healthz")).status_code == 200
        assert counts(stack) == before


async def test_a_body_that_arrives_in_pieces_within_the_deadline_is_taken(make_stack: StackFactory) -> None:
    async with make_stack(SLOW_TASKS, body_timeout=10.0) as stack:
        video = (await stack.submit()).json()
        body = json.dumps({"id": video["id"], "object": "video", "status": "in_progress"}).encode()
        headers = sign_headers(body, msg_id="msg_pieces")
        head = "POST /webhooks HTTP/1.1\r\nhost: localhost\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        head += f"content-length: {len(body)}\r\n\r\n"
        async with connections(stack.url, 1) as [(reader, writer)]:
            writer.write(head.encode())
            for i in range(0, len(body), 16):
                writer.write(body[i : i + 16])
                await writer.drain()
            answer_head, answer = await read_answer(reader)
        assert answer_head.startswith(b"HTTP/1.1 200 "), answer
        assert (await stack.video(video["id"]))["receiver"]["deliveries"] == 1


# -- classes of connections at the cap ----------------------------------------------------------


async def test_slow_bodies_at_the_cap_never_keep_a_signed_delivery_out(make_stack: StackFactory) -> None:
    # The body deadline is far away: what lets the delivery in is the eviction order.
    async with make_stack(SLOW_TASKS, max_connections=32, body_timeout=30.0, keepalive_timeout=60.0) as stack:
        video = (await stack.submit()).json()
        before = counts(stack)
        async with connections(stack.url, 40) as attackers:
            for _, writer in attackers:
                writer.write(SLOW_BODY)
                await writer.drain()

            # 40 > 32: once 8 are cut off, the server has taken all of them in.
            async def cut_off() -> bool:
                return sum([await gone(reader) for reader, _ in attackers]) >= 8

            await wait_until(cut_off, timeout=10, what="attackers to be cut off")
            answer = await signed_delivery(stack, video["id"], "msg_at_cap", timeout=10)
            assert answer.status_code == 200, answer.text
            assert (await stack.client.get(f"{stack.url}/healthz")).status_code == 200
            assert (await stack.client.get(f"{stack.url}/")).status_code == 200
        after = counts(stack)
        assert after["deliveries"] == before["deliveries"] + 1


async def test_at_the_cap_stuck_connections_go_first_then_the_longest_idle(make_stack: StackFactory) -> None:
    async with make_stack(
        SLOW_TASKS, max_connections=16, header_timeout=60.0, keepalive_timeout=60.0
    ) as stack:
        healthz = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n"
        async with (
            connections(stack.url, 8) as idle,
            connections(stack.url, 8) as stuck,
        ):
            for reader, writer in idle:
                writer.write(healthz)
                assert (await read_answer(reader))[0].startswith(b"HTTP/1.1 200 ")
            for _, writer in stuck:
                writer.write(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n")  # a head that never ends
                await writer.drain()
            # One more round trip: the server has read the stuck heads before it answers this
            # (they were in its sockets first). The last idle connection is now the newest idle.
            idle[-1][1].write(healthz)
            assert (await read_answer(idle[-1][0]))[0].startswith(b"HTTP/1.1 200 ")
            async with connections(stack.url, 0) as newcomers:
                for n in range(8):
                    newcomers.append(await asyncio.open_connection("127.0.0.1", port_of(stack.url)))
                    reader, writer = newcomers[-1]
                    writer.write(healthz)
                    assert (await read_answer(reader))[0].startswith(b"HTTP/1.1 200 ")
                    # The stuck connection that has waited longest made room, in order.
                    assert await read_all(stuck[n][0], 5) == b""
                # No stuck connection is left: the next newcomer closes the longest idle one.
                newcomers.append(await asyncio.open_connection("127.0.0.1", port_of(stack.url)))
                newcomers[-1][1].write(healthz)
                assert (await read_answer(newcomers[-1][0]))[0].startswith(b"HTTP/1.1 200 ")
                assert await read_all(idle[0][0], 5) == b""
                for reader, writer in idle[1:]:
                    writer.write(healthz)
                    assert (await read_answer(reader))[0].startswith(b"HTTP/1.1 200 ")


# -- event streams ------------------------------------------------------------------------------


STREAM = b"GET /v1/events/stream HTTP/1.1\r\nhost: localhost\r\n\r\n"


async def open_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Ask for an event stream: the head of a stream that started, or a whole refusal."""
    writer.write(STREAM)
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 200 "):
        async with asyncio.timeout(5):
            await reader.readuntil(b": connected\n\n")
        return head
    return head + await read_all(reader, 5)


async def test_streams_past_their_cap_get_503_and_deliveries_still_find_room(
    make_stack: StackFactory,
) -> None:
    # As reported: 40 streams on a process of 32 connections used to take every one of them.
    async with make_stack(SLOW_TASKS, max_connections=32, keepalive_timeout=60.0) as stack:
        video = (await stack.submit()).json()
        before = counts(stack)
        async with connections(stack.url, 0) as readers:
            answers = []
            for _ in range(40):
                readers.append(await asyncio.open_connection("127.0.0.1", port_of(stack.url)))
                answers.append(await open_stream(*readers[-1]))
            started = [a for a in answers if a.startswith(b"HTTP/1.1 200 ")]
            refused = [a for a in answers if not a.startswith(b"HTTP/1.1 200 ")]
            assert len(started) == 16  # half of RECEIVER_MAX_CONNECTIONS, below RECEIVER_MAX_STREAMS
            assert len(refused) == 24
            for answer in refused:  # each read to the end: the server closed the connection
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 503 "), answer[:200]
                assert b"\r\nretry-after: " in head.lower() and b"connection: close" in head.lower()
                assert error_of(body)["code"] == "too_many_streams"
            assert stack.app.state.ctx.open_streams == 16
            # Streams at their cap, and slow bodies in every other slot: a delivery still gets in.
            async with connections(stack.url, 24) as attackers:
                for _, writer in attackers:
                    writer.write(SLOW_BODY)
                    await writer.drain()
                answer = await signed_delivery(stack, video["id"], "msg_streams", timeout=10)
                assert answer.status_code == 200, answer.text
        # Streams that end (here the readers leave) give their places back.
        await wait_until(lambda: stack.app.state.ctx.open_streams == 0, what="the streams to be released")
        async with connections(stack.url, 16) as readers:
            for reader, writer in readers:
                assert (await open_stream(reader, writer)).startswith(b"HTTP/1.1 200 ")
        assert counts(stack)["deliveries"] == before["deliveries"] + 1


async def test_max_streams_caps_streams_below_half_the_connections(make_stack: StackFactory) -> None:
    async with make_stack(SLOW_TASKS, max_streams=2) as stack, connections(stack.url, 3) as readers:
        assert (await open_stream(*readers[0])).startswith(b"HTTP/1.1 200 ")
        # Streams refused for a bad Last-Event-ID take no place.
        for _ in range(3):
            bad = await stack.client.get(f"{stack.url}/v1/events/stream", headers={"last-event-id": "evt_42"})
            assert bad.status_code == 400
        assert (await open_stream(*readers[1])).startswith(b"HTTP/1.1 200 ")
        assert (await open_stream(*readers[2])).startswith(b"HTTP/1.1 503 ")


# -- the uvicorn internals server.py builds on --------------------------------------------------


def test_uvicorn_is_the_pinned_version() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    (pin,) = [Requirement(d) for d in pyproject["project"]["dependencies"] if d.startswith("uvicorn")]
    assert pin.specifier.contains(metadata.version("uvicorn")), (
        f"uvicorn {metadata.version('uvicorn')} is outside {pin}: receiver/server.py subclasses its "
        "private HttpToolsProtocol; check it against the new version, then move the pin"
    )


OVERRIDDEN = (
    "connection_made",
    "connection_lost",
    "data_received",
    "eof_received",
    "on_message_begin",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
    "_unset_keepalive_if_required",
)


async def test_uvicorn_still_has_what_the_guarded_protocol_relies_on() -> None:
    missing = [name for name in OVERRIDDEN if not callable(getattr(HttpToolsProtocol, name, None))]
    assert not missing, (
        f"uvicorn's HttpToolsProtocol no longer has {missing} (receiver/server.py overrides them)"
    )
    seen: dict[str, set[str]] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        cycle = receive.__self__  # uvicorn hands the app the cycle's own bound methods
        assert isinstance(cycle, RequestResponseCycle)
        seen["cycle"] = set(vars(cycle))
        seen["protocol"] = set(vars(cycle.on_response.__self__))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serve(app, limits=ConnectionLimits()) as url, httpx.AsyncClient() as client:
        assert (await client.get(f"{url}/")).status_code == 204
    cycle_needs = {
        "response_started",
        "response_complete",
        "disconnected",
        "message_event",
        "on_response",
    }
    protocol_needs = {"connections", "cycle", "loop", "transport", "url", "headers", "parser"}
    assert not cycle_needs - seen["cycle"], f"RequestResponseCycle lost {cycle_needs - seen['cycle']}"
    assert not protocol_needs - seen["protocol"], (
        f"HttpToolsProtocol lost {protocol_needs - seen['protocol']}"
    )
    assert issubclass(guarded_protocol(ConnectionLimits()), HttpToolsProtocol)
