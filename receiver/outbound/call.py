"""The one discipline for calls we make (provider, subscribers, result files): a total deadline,
stall detection, and an answer read as a stream that stops at its cap. Its errors are the
CallError branch of receiver.errors (CallTimeout: DeadlineExceeded or Stalled; TooLarge;
BadEncoding), re-exported here.

Any HTTP client fits: the caller wraps its whole call in `Budget.bound()`, awaits the answer's
head through `Budget.head()`, and reads the body's raw chunks through `Budget.body()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from receiver.errors import BadEncoding, CallError, CallTimeout, DeadlineExceeded, Stalled, TooLarge

__all__ = [
    "ACCEPT_ENCODING",
    "BadEncoding",
    "Body",
    "Budget",
    "CallError",
    "CallTimeout",
    "DeadlineExceeded",
    "Stalled",
    "TooLarge",
    "parse_retry_after",
]

T = TypeVar("T")

CHUNK = 64 * 1024  # bytes of decoded output produced per step, whatever one encoded chunk expands to
ACCEPT_ENCODING = "gzip, deflate"  # the encodings Body can decode; offer no others


class _Decoder:
    """Content-Encoding undone a bounded step at a time: a small encoded chunk that expands a
    thousandfold (a compression bomb) comes out in CHUNK-sized pieces, each counted against the
    cap before the next is made."""

    def __init__(self, encoding: str | None) -> None:
        name = (encoding or "identity").strip().lower()
        if name not in ("identity", "gzip", "x-gzip", "deflate"):
            raise BadEncoding(f"Content-Encoding {name[:40]!r} is not supported")
        self._name = name
        self._inflate: zlib._Decompress | None = None
        self._start = b""  # a stream's first byte, until there are two to tell its form by

    @property
    def identity(self) -> bool:
        return self._name == "identity"

    def _begin(self, data: bytes) -> zlib._Decompress:
        # After the first stream ends, gzip allows another member; nothing else may follow.
        if self._inflate is not None and (self._name == "deflate" or not data.startswith(b"\x1f\x8b")):
            raise BadEncoding("bytes after the end of the encoded body")
        if self._name != "deflate":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # "deflate" is meant to be zlib-wrapped, but servers send raw deflate too.
        zlib_header = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._name == "identity":
            if data:
                yield data
            return
        data, self._start = self._start + data, b""
        try:
            while data:
                if self._inflate is None or self._inflate.eof:
                    if len(data) < 2:
                        self._start = data
                        return
                    self._inflate = self._begin(data)
                out = self._inflate.decompress(data, CHUNK)
                data = self._inflate.unused_data if self._inflate.eof else self._inflate.unconsumed_tail
                if out:
                    yield out
        except zlib.error as exc:
            raise BadEncoding(f"the {self._name} body is corrupt ({exc})") from None

    def end(self) -> None:
        if self._name != "identity" and (self._start or self._inflate is None or not self._inflate.eof):
            raise BadEncoding(f"the {self._name} body ends early")


class Body:
    """An answer's body: raw chunks in, decoded chunks out, never more than the cap.

    Iterate it for the decoded chunks (TooLarge once past the cap), or take it whole with
    `read()`, or only its first `cap` bytes with `prefix()`. `received` counts the raw bytes,
    `size` the decoded ones.
    """

    def __init__(self, chunks: AsyncIterable[bytes], budget: Budget, encoding: str | None) -> None:
        self._chunks = chunks
        self._budget = budget
        self._decoder = _Decoder(encoding)
        self.received = 0
        self.size = 0

    @property
    def encoded(self) -> bool:
        return not self._decoder.identity

    async def _raw(self) -> AsyncGenerator[bytes, None]:
        """The raw chunks, Stalled when fewer than `stall_bytes` arrive in a `stall` window: a
        sender dripping a byte now and then holds a download slot as surely as a silent one."""
        stall, least = self._budget.stall, self._budget.stall_bytes
        loop = asyncio.get_running_loop()
        window_ends = loop.time() + stall if stall is not None else None
        got = 0  # bytes in the current window
        iterator = aiter(self._chunks)
        while True:
            try:
                async with asyncio.timeout_at(window_ends) as scope:
                    chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if scope.expired():
                    raise Stalled(f"fewer than {least} bytes in {stall:g} s") from None
                raise
            self.received += len(chunk)
            got += len(chunk)
            if stall is not None and got >= least:
                window_ends, got = loop.time() + stall, 0
            yield chunk

    async def _decoded(self, *, stop_at_cap: bool) -> AsyncIterator[bytes]:
        cap = self._budget.cap
        async with contextlib.aclosing(self._raw()) as raw:
            async for chunk in raw:
                for piece in self._decoder.feed(chunk):
                    room = cap - self.size
                    if len(piece) > room:
                        if not stop_at_cap:
                            raise TooLarge(f"the answer is larger than {cap} bytes")
                        self.size = cap
                        if room:
                            yield piece[:room]
                        return
                    self.size += len(piece)
                    yield piece
        self._decoder.end()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._decoded(stop_at_cap=False)

    async def read(self) -> bytes:
        """The whole body; TooLarge as soon as it passes the cap (nothing more is read)."""
        return b"".join([piece async for piece in self._decoded(stop_at_cap=False)])

    async def prefix(self) -> bytes:
        """The body's first `cap` bytes; the rest is left unread."""
        return b"".join([piece async for piece in self._decoded(stop_at_cap=True)])


@dataclass(frozen=True)
class Budget:
    """What one call may take: `deadline` seconds for all of it (connect, send, head, body),
    `cap` bytes of answer, and, when `stall` is set, at least `stall_bytes` in every `stall`
    seconds (the default, one byte: never that long without a byte)."""

    deadline: float
    cap: int
    stall: float | None = None
    stall_bytes: int = 1  # what must arrive in each `stall` window (1: any byte at all)

    @contextlib.asynccontextmanager
    async def bound(self) -> AsyncIterator[None]:
        """Run the whole call inside: DeadlineExceeded when it outlives the deadline, wherever it
        was (resolving, connecting, waiting for the head, reading the body)."""
        try:
            async with asyncio.timeout(self.deadline) as scope:
                yield
        except TimeoutError:
            if scope.expired():
                raise DeadlineExceeded(f"no whole answer within {self.deadline:g} s") from None
            raise

    async def head(self, pending: Awaitable[T]) -> T:
        """The answer's head (status and headers), given up as Stalled after `stall` seconds."""
        try:
            async with asyncio.timeout(self.stall) as scope:
                return await pending
        except TimeoutError:
            if scope.expired():
                raise Stalled(f"no answer for {self.stall:g} s") from None
            raise

    def body(self, chunks: AsyncIterable[bytes], encoding: str | None = None) -> Body:
        """Read the raw `chunks` of an answer sent with Content-Encoding `encoding`; BadEncoding
        at once for an encoding we cannot undo."""
        return Body(chunks, self, encoding)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the delay form), or None when absent or not a number."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
