"""AMQP 0-9-1 destination (aiormq): a persistent message, delivered once publisher-confirmed."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import aiormq
import aiormq.abc
from aiormq.exceptions import PublishError
from pamqp.commands import Basic
from yarl import URL

from receiver.outbound.addresses import Network
from receiver.outbound.destinations.base import BlockedAddress, Message, Outcome, scrub, vet_host

__all__ = ["AmqpDestination", "amqp_target"]

CONFIRMED = Outcome(True)


def amqp_target(url: str) -> tuple[str, str]:
    """(exchange, routing_key) from the query; ValueError when neither names where to go."""
    query = parse_qs(urlsplit(url).query)
    exchange = query.get("exchange", [""])[0]
    routing_key = query.get("routing_key", [""])[0]
    if not exchange and not routing_key:
        raise ValueError("an amqp URL needs ?exchange= and/or ?routing_key=")
    return exchange, routing_key


class AmqpDestination:
    """One connection and one confirming channel per destination, made on first use and made
    again after any failure (a restarted broker, a closed channel)."""

    def __init__(self, url: str, allow: tuple[Network, ...], deadline: float) -> None:
        self._parts = urlsplit(url)
        self._allow = allow
        self._deadline = deadline
        self._exchange, self._routing_key = amqp_target(url)
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()

    async def _ready(self) -> aiormq.abc.AbstractChannel:
        async with self._lock:
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            await self._reset()
            parts = self._parts
            tls = parts.scheme == "amqps"
            address = await vet_host(parts.geturl(), self._allow, 5671 if tls else 5672)
            # TLS checks the certificate against the name, so it connects by name.
            host = parts.hostname or "" if tls else address
            connect = aiormq.connect(
                URL.build(
                    scheme=parts.scheme,
                    host=host,
                    port=parts.port or (5671 if tls else 5672),
                    user=unquote(parts.username or "guest"),
                    password=unquote(parts.password or "guest"),
                    path="/" + (unquote(parts.path[1:]) if len(parts.path) > 1 else "/"),
                )
            )
            self._connection = await connect
            self._channel = await self._connection.channel(publisher_confirms=True)
            return self._channel

    async def _reset(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=2)

    async def publish(self, message: Message) -> Outcome:
        (outcome,) = await self.publish_many([message])
        return outcome

    async def publish_many(self, messages: list[Message]) -> list[Outcome]:
        """Every message published on the confirming channel before any confirm is awaited (the
        broker confirms them as it takes them): a window in one round trip, not one per message."""
        try:
            async with asyncio.timeout(self._deadline):
                channel = await self._ready()
                confirms = await asyncio.gather(
                    *(self._publish(channel, m) for m in messages), return_exceptions=True
                )
        except BlockedAddress as exc:
            return [Outcome(False, error=str(exc), reached=False)] * len(messages)
        except TimeoutError:
            await self._drop()
            return [Outcome(False, error="timed out")] * len(messages)
        except Exception as exc:
            await self._drop()
            return [Outcome(False, error=scrub(f"{type(exc).__name__}: {exc}", self._parts))] * len(messages)
        outcomes = [self._outcome(confirm) for confirm in confirms]
        if any(isinstance(c, BaseException) and not isinstance(c, PublishError) for c in confirms):
            await self._drop()  # the channel or the connection failed: made again on next use
        return outcomes

    async def _publish(self, channel: aiormq.abc.AbstractChannel, message: Message) -> Any:
        properties = Basic.Properties(
            content_type="application/json",
            delivery_mode=2,
            message_id=message.id,
            message_type=message.type,
            headers=dict[str, Any](message.headers()),
        )
        # mandatory: a message no queue takes comes back (PublishError), never "delivered".
        # wait=False: the confirm is what is awaited, not the write of each message's frames.
        return await cast(aiormq.Channel, channel).basic_publish(
            message.body,
            exchange=self._exchange,
            routing_key=self._routing_key,
            properties=properties,
            mandatory=True,
            wait=False,
        )

    def _outcome(self, confirm: Any) -> Outcome:
        if isinstance(confirm, Basic.Ack):
            return CONFIRMED
        if isinstance(confirm, PublishError):
            return Outcome(False, error="the broker routed it to no queue (returned)")
        if isinstance(confirm, BaseException):
            return Outcome(False, error=scrub(f"{type(confirm).__name__}: {confirm}", self._parts))
        return Outcome(False, error=f"the broker did not confirm it ({type(confirm).__name__})")

    async def _drop(self) -> None:
        async with self._lock:
            await self._reset()

    async def close(self) -> None:
        await self._drop()
