"""Run the app under uvicorn with connection limits that hold against hostile clients.

uvicorn's HTTP/1.1 protocol (httptools) has no cap on header size, no deadline for a head or a
body to arrive, and it accepts connections until the process runs out of file descriptors. The
protocol below adds, per connection: a cap on the bytes of a request head (431), a deadline for
the head to arrive (the connection is closed; this also ends connections that never send
anything), a deadline for the body once the head is in (408 `body_timeout`, then the connection
closes), and a cap on open connections. At the cap a new connection makes room by closing, in
this order: one stuck in a head or a body (the longest stuck first), else the longest idle one;
only when every connection is busy with a request the app is handling is the new one refused. So
no number of clients trickling heads or bodies, or sitting idle, keeps a real delivery out; the
app caps what it holds open itself (event streams, receiver.routes.events). Idle keep-alive connections
close after `keepalive_timeout` (uvicorn's own timer).

This subclasses uvicorn's private HttpToolsProtocol, so uvicorn is pinned to the minor version
tested (pyproject.toml), and tests/test_connections.py fails by name if what is relied on here
moves in an upgrade.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from receiver.errors import ApiError, InvalidRequest
from receiver.settings import Settings, SettingsError

__all__ = ["ConnectionLimits", "Server", "guarded_protocol", "make_server", "raise_fd_limit"]

log = logging.getLogger("receiver")

# After an early answer (413, 431) the client may still be sending: read and drop at most this
# much, for at most this long, before closing, so it sees the answer instead of a reset.
LINGER_BYTES = 1 << 20
LINGER_SECONDS = 2.0

# File descriptors kept free for what is not a client connection: the store, outbound
# sends, polls, logs.
FD_RESERVE = 256


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 32_768
    header_timeout: float = 5.0
    max_connections: int = 1000
    body_timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            settings.max_header_bytes,
            settings.header_timeout,
            settings.max_connections,
            settings.body_timeout,
        )


def _answer(error: ApiError) -> bytes:
    """A whole HTTP answer for an error found below the app (the app never sees the request)."""
    body = json.dumps(error.body(), separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


# Eviction ranks at the connection cap: lower goes first; a busy connection has none.
_DONE, _STUCK, _IDLE = 0, 1, 2


class _LingeringTransport:
    """The connection's transport as uvicorn sees it.

    - close() while the request is still arriving half-closes and drains first (closing a socket
      with unread data sends a reset, which throws away the answer we just wrote).
    - Writes made in one turn of the loop go out in one send: uvicorn writes an answer's head
      and its body separately, and a system call each was 7% of the ack path's CPU.
    """

    def __init__(self, transport: asyncio.Transport, protocol: _GuardedProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._pending: list[bytes] | None = None

    def __getattr__(self, name: str) -> Any:
        self.flush()  # whatever the caller does next sees every byte written so far
        return getattr(self._transport, name)

    def write(self, data: bytes) -> None:  # the hot path: no __getattr__ on every answer
        if self._pending is None:
            self._pending = [data]
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            self._pending.append(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(b"".join(pending))

    def close(self) -> None:
        self.flush()
        if self._protocol._receiving() and not self._transport.is_closing():
            self._protocol._linger()
        else:
            self._transport.close()

    def is_closing(self) -> bool:
        return self._protocol._lingering or self._transport.is_closing()


class _GuardedProtocol(HttpToolsProtocol):
    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # True from the end of one message to the end of the next head; False while a body is
        # awaited (the head is in, the message is not complete).
        self._awaiting_head = True
        self._head_bytes = 0  # bytes received while a head is awaited (it may arrive in pieces)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._since = 0.0  # when the current request began arriving, or the connection went idle
        self._lingering = False
        self._linger_bytes = 0
        self._raw: asyncio.Transport | None = None

    # -- connection admission ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._since = time.monotonic()
        if len(self.connections) >= self.limits.max_connections and not self._evict_one():
            # Every connection is busy with a request the app is handling: refuse this one outright.
            transport.abort()
            return
        self._raw = transport
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        self._arm_head_timer()

    def _idle(self) -> bool:
        return self._awaiting_head and (self.cycle is None or self.cycle.response_complete)

    def _rank(self) -> int | None:
        """Which connections go first when one must (None: busy, never evicted)."""
        if self._lingering:
            return _DONE  # answered already; only draining what the client still sends
        if not self._awaiting_head:
            return _STUCK  # in a body
        if not self._idle():
            return None  # the app is answering (a pipelined head may be arriving meanwhile)
        return _STUCK if self._head_bytes else _IDLE

    def _evict_one(self) -> bool:
        victim: _GuardedProtocol | None = None
        best: tuple[int, float] | None = None
        for conn in self.connections:
            if not isinstance(conn, _GuardedProtocol):
                continue
            rank = conn._rank()
            if rank is not None and (best is None or (rank, conn._since) < best):
                victim, best = conn, (rank, conn._since)
        if victim is None:
            return False
        victim._abort()
        # abort() calls connection_lost on the next loop turn: count it gone now.
        self.connections.discard(victim)
        return True

    # -- deadlines -----------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._awaiting_head and self._raw is not None and not self._raw.is_closing():
            self._raw.close()

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        raw = self._raw
        if self._awaiting_head or self._lingering or raw is None or raw.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app hears a disconnect and whatever it answers goes nowhere: the request was
            # never whole, so nothing of it may be acted on.
            cycle.disconnected = True
            cycle.message_event.set()
            if not cycle.response_started:
                self._flush()
                seconds = f"{self.limits.body_timeout:g}"
                raw.write(
                    _answer(
                        InvalidRequest(
                            f"the request body did not arrive within {seconds} s",
                            code="body_timeout",
                            status=408,
                        )
                    )
                )
        self._linger()

    # -- the connection's bytes ----------------------------------------------------------------

    def _receiving(self) -> bool:
        """Bytes of the current request may still be on their way (a head, or a body)."""
        return not self._awaiting_head or self._head_bytes > 0

    def _flush(self) -> None:
        if isinstance(self.transport, _LingeringTransport):
            self.transport.flush()

    def _abort(self) -> None:
        if self._raw is not None:
            self._raw.abort()

    def _linger(self) -> None:
        raw = self._raw
        if raw is None or self._lingering:
            return
        self._flush()  # an answer written this turn goes out before the end of the stream
        self._lingering = True
        self._disarm_head_timer()
        self._disarm_body_timer()
        self._unset_keepalive_if_required()
        if raw.can_write_eof():
            raw.write_eof()
        self.loop.call_later(LINGER_SECONDS, raw.close)

    def eof_received(self) -> None:
        if self._lingering and self._raw is not None:
            self._raw.close()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._linger_bytes += len(data)
            if self._linger_bytes > LINGER_BYTES and self._raw is not None:
                self._raw.close()
            return
        if self._awaiting_head:
            self._arm_head_timer()  # a keep-alive connection starting its next request
            if self._head_bytes == 0:
                self._since = time.monotonic()
            self._head_bytes += len(data)
        super().data_received(data)
        if self._awaiting_head:
            if self._head_bytes > self.limits.max_header_bytes:
                self._reject_head()
        elif self._body_timer is None and not self._lingering:
            # Armed only when a read ends inside a body: a request that arrives whole costs no timer.
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def _reject_head(self) -> None:
        self._disarm_head_timer()
        if self._raw is None or self.transport.is_closing():
            return
        error = InvalidRequest(
            f"request headers are larger than {self.limits.max_header_bytes} bytes",
            code="headers_too_large",
            status=431,
        )
        self._flush()
        self._raw.write(_answer(error))
        self._linger()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_head = True

    def on_body(self, body: bytes) -> None:
        if not self._lingering:  # the rest of a refused request is not read
            super().on_body(body)

    def on_headers_complete(self) -> None:
        # A head that arrives whole in one read is parsed before data_received can count it:
        # measure what the parser gathered, and refuse it before the app sees the request.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._reject_head()
            return
        self._awaiting_head = False
        self._head_bytes = 0
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm_body_timer()
        if self._lingering:
            return
        super().on_message_complete()
        self._awaiting_head = True
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        self._since = time.monotonic()  # idle from now, for the eviction order
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._disarm_body_timer()
        if self._raw is None:  # refused in connection_made: uvicorn never saw it
            return
        self._awaiting_head, self._head_bytes = True, 0  # nothing more arrives: close is close
        super().connection_lost(exc)


def guarded_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class with `limits` (a subclass per server: no globals)."""
    return type("GuardedHttpProtocol", (_GuardedProtocol,), {"limits": limits})


class Server(uvicorn.Server):
    """uvicorn's server that says where it listens once its sockets accept connections (with
    port 0, the port the system chose)."""

    name = "receiver"
    log = log

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                self.log.info("%s listening on http://%s:%d", self.name, shown, port)


def make_server(app: Any, settings: Settings, **config: Any) -> Server:
    """A server for `app` with the connection settings applied (tests pass their own socket)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "proxy_headers": False,
        "access_log": False,
        "log_level": "warning",
        "lifespan": "on",
        "http": guarded_protocol(ConnectionLimits.from_settings(settings)),
        "timeout_keep_alive": settings.keepalive_timeout,
        # For the h11 fallback; the guarded protocol caps heads itself.
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
    options.update(config)
    return Server(uvicorn.Config(app, **options))


def raise_fd_limit(settings: Settings) -> None:
    """Make room for RECEIVER_MAX_CONNECTIONS sockets plus a reserve, or stop naming it."""
    needed = settings.max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
        if target < needed:
            raise SettingsError(
                f"RECEIVER_MAX_CONNECTIONS: {settings.max_connections} connections need {needed} open "
                f"files, the limit here is {target} (lower it, or raise `ulimit -n`)"
            )
