"""A raw HTTP server for the tests of calls we make: it answers byte by byte as each test scripts
it (slow heads, dripping bodies, floods, files), and records every exchange."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Exchange:
    """One connection's request and how many body bytes the server got out before it ended."""

    request: Request
    sent: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


Answer = Callable[[Exchange, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """HTTP/1.1 on a loopback port, written by hand so a test decides every byte and its pace:
    each connection's request head is read, then `answer` writes what it likes and the
    connection closes. `exchanges` records each connection and what it managed to send."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self.exchanges: list[Exchange] = []
        self.url = ""
        self._handlers: set[asyncio.Task[Any]] = set()

    def of(self, path: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.request.path == path]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        exchange: Exchange | None = None
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = line.split(" ", 2)
            headers = {}
            for header in lines:
                if ":" in header:
                    name, value = header.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            await reader.readexactly(int(headers.get("content-length", "0")))
            exchange = Exchange(Request(method, path, headers))
            self.exchanges.append(exchange)
            await self._answer(exchange, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the receiver hung up: what a capped or abandoned call does
        finally:
            self._handlers.discard(handler)
            if exchange is not None:
                exchange.done.set()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            yield self.url
        finally:
            server.close()
            for handler in list(self._handlers):  # answers still dripping or silent
                handler.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await server.wait_closed()


def head(status: int = 200, **headers: str | int) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join([*lines, "connection: close"]) + "\r\n\r\n").encode()


async def send(exchange: Exchange, writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
    exchange.sent += len(data)


async def drip(exchange: Exchange, writer: asyncio.StreamWriter, *, every: float, count: int) -> None:
    """One byte per `every` seconds, `count` of them at most."""
    for _ in range(count):
        await send(exchange, writer, b" ")
        await asyncio.sleep(every)  # wait-ok: the server's pace is the behaviour under test


async def flood(exchange: Exchange, writer: asyncio.StreamWriter, total: int) -> None:
    """`total` bytes as fast as the receiver takes them, until it hangs up."""
    chunk = b"x" * (64 * 1024)
    for _ in range(total // len(chunk)):
        await send(exchange, writer, chunk)


def file_server(files: dict[str, tuple[bytes, dict[str, str]]], drip_every: float = 2.0) -> RawServer:
    """Paths under /silent/ never answer; under /drip/ they announce 1000 bytes and send one per
    `drip_every` seconds; any other path is a file from `files` (its bytes, its extra headers)."""

    async def answer(exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        path = exchange.request.path
        if path.startswith("/silent/"):
            await asyncio.sleep(60)  # wait-ok: a server that never answers is the behaviour under test
            return
        if path.startswith("/drip/"):
            await send(exchange, writer, head(200, content_type="video/mp4", content_length=1000))
            await drip(exchange, writer, every=drip_every, count=1000)
            return
        data, headers = files[path]
        await send(exchange, writer, head(200, content_length=len(data), **headers))
        await send(exchange, writer, data)

    return RawServer(answer)
