"""Where events go: one interface over HTTP and the brokers, pooled per destination.

A destination only publishes one signed event and says whether the far side confirmed it; the
dispatcher (receiver.workers.dispatcher) owns the outbox, retries, windows, dead letters and replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import aiohttp

from receiver.outbound.addresses import Network
from receiver.outbound.destinations.amqp import AmqpDestination, amqp_target
from receiver.outbound.destinations.base import BlockedAddress, Destination, Message, Outcome
from receiver.outbound.destinations.http import HttpDestination
from receiver.outbound.destinations.nats import NatsDestination, nats_subject
from receiver.outbound.destinations.redis import RedisDestination, redis_stream

__all__ = [
    "BROKER_SCHEMES",
    "BlockedAddress",
    "Destination",
    "Destinations",
    "Message",
    "Outcome",
    "check_target",
]

BROKER_SCHEMES = frozenset({"amqp", "amqps", "nats", "tls", "redis", "rediss"})
IDLE = 60.0  # seconds a broker connection stays open with nothing to publish


def check_target(url: str) -> None:
    """ValueError when a broker URL does not say where in the broker its events go."""
    scheme = urlsplit(url).scheme
    if scheme in ("amqp", "amqps"):
        amqp_target(url)
    elif scheme in ("nats", "tls"):
        nats_subject(url)
    elif scheme in ("redis", "rediss"):
        redis_stream(url)


class _Entry:
    __slots__ = ("destination", "in_flight", "used")

    def __init__(self, destination: Destination, now: float) -> None:
        self.destination = destination
        self.in_flight = 0
        self.used = now


class Destinations:
    """The destinations of this process, by URL: HTTP ones share one aiohttp session; each broker
    URL keeps its own connection, reused by every send to it and closed once idle."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        allow: tuple[Network, ...],
        deadline: float,
        *,
        connections: int,
        idle: float = IDLE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._allow = allow
        self._deadline = deadline
        self._connections = connections
        self._idle = idle
        self._monotonic = monotonic
        self._brokers: dict[str, _Entry] = {}

    def _make(self, url: str) -> Destination:
        scheme = urlsplit(url).scheme
        if scheme in ("amqp", "amqps"):
            return AmqpDestination(url, self._allow, self._deadline)
        if scheme in ("nats", "tls"):
            return NatsDestination(url, self._allow, self._deadline)
        if scheme in ("redis", "rediss"):
            return RedisDestination(url, self._allow, self._deadline, self._connections)
        return HttpDestination(url, self._http, self._allow, self._deadline)

    async def publish(self, url: str, message: Message) -> Outcome:
        (outcome,) = await self.publish_many(url, [message])
        return outcome

    async def publish_many(self, url: str, messages: list[Message]) -> list[Outcome]:
        """Publish the messages to `url`: a broker's as one window (see Destination)."""
        if urlsplit(url).scheme not in BROKER_SCHEMES:
            destination = self._make(url)
            if len(messages) == 1:
                return [await destination.publish(messages[0])]
            return await destination.publish_many(messages)
        entry = self._brokers.get(url)
        if entry is None:
            try:
                destination = self._make(url)
            except ValueError as exc:
                return [Outcome(False, error=str(exc), reached=False)] * len(messages)
            entry = self._brokers[url] = _Entry(destination, self._monotonic())
        entry.in_flight += 1
        try:
            return await entry.destination.publish_many(messages)
        finally:
            entry.in_flight -= 1
            entry.used = self._monotonic()

    async def sweep(self) -> None:
        """Close the broker connections nothing has used for `idle` seconds."""
        now = self._monotonic()
        idle = [url for url, e in self._brokers.items() if not e.in_flight and now - e.used > self._idle]
        for url in idle:
            entry = self._brokers.pop(url)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(entry.destination.close(), timeout=5)

    async def close(self) -> None:
        entries, self._brokers = list(self._brokers.values()), {}
        for entry in entries:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(entry.destination.close(), timeout=5)
