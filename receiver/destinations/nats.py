"""NATS JetStream destination (nats-py): delivered when the stream acknowledges the publish."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from receiver.destinations.base import BlockedAddress, Message, Outcome, scrub, vet_host
from receiver.outbound import Network

__all__ = ["NatsDestination", "nats_subject"]

CONFIRMED = Outcome(True)
_ANSWERED = (nats.errors.NoRespondersError,)  # an answer, not a broken connection


def nats_subject(url: str) -> str:
    subject = parse_qs(urlsplit(url).query).get("subject", [""])[0]
    if not subject or any(c in subject for c in " *>"):
        raise ValueError("a nats URL needs ?subject= (a plain subject, no wildcards)")
    return subject


async def _quiet(*_: Any) -> None:
    """nats-py reports connection trouble through callbacks; the attempt's outcome says it instead."""


class NatsDestination:
    """One client per destination, connected on first use and again after any failure. The
    client's own reconnect loop is off: a publish during an outage fails at once and is retried
    by the dispatcher's schedule, not held in a buffer we cannot see."""

    def __init__(self, url: str, allow: tuple[Network, ...], deadline: float) -> None:
        self._parts = urlsplit(url)
        self._allow = allow
        self._deadline = deadline
        self._subject = nats_subject(url)
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def _ready(self) -> Client:
        async with self._lock:
            if self._client is not None and self._client.is_connected:
                return self._client
            await self._reset()
            parts = self._parts
            tls = parts.scheme == "tls"
            address = await vet_host(parts.geturl(), self._allow, 4222)
            # TLS checks the certificate against the name, so it connects by name.
            host = parts.hostname or "" if tls else f"[{address}]" if ":" in address else address
            options: dict[str, Any] = {}
            if parts.username:
                options["user"] = unquote(parts.username)
                options["password"] = unquote(parts.password or "")
            if tls:
                options["tls"] = ssl.create_default_context()
                options["tls_hostname"] = parts.hostname
            self._client = await nats.connect(
                servers=[f"nats://{host}:{parts.port or 4222}"],
                allow_reconnect=False,
                connect_timeout=self._deadline,
                error_cb=_quiet,
                disconnected_cb=_quiet,
                closed_cb=_quiet,
                **options,
            )
            return self._client

    async def _reset(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), timeout=2)

    async def publish(self, message: Message) -> Outcome:
        (outcome,) = await self.publish_many([message])
        return outcome

    async def publish_many(self, messages: list[Message]) -> list[Outcome]:
        """Every message published before any acknowledgement is awaited (the client sends
        them together; the stream acknowledges each by its own reply)."""
        try:
            async with asyncio.timeout(self._deadline):
                client = await self._ready()
                acks = await asyncio.gather(
                    *(self._publish(client, m) for m in messages), return_exceptions=True
                )
        except BlockedAddress as exc:
            return [Outcome(False, error=str(exc), reached=False)] * len(messages)
        except TimeoutError:
            await self._drop()
            return [Outcome(False, error="timed out")] * len(messages)
        except Exception as exc:
            await self._drop()
            return [Outcome(False, error=scrub(f"{type(exc).__name__}: {exc}", self._parts))] * len(messages)
        outcomes = [self._outcome(ack) for ack in acks]
        if any(isinstance(a, Exception) and not isinstance(a, _ANSWERED) for a in acks):
            await self._drop()  # the connection failed: made again on next use
        return outcomes

    async def _publish(self, client: Client, message: Message) -> bytes:
        headers = {**message.headers(), "Nats-Msg-Id": message.id, "content-type": "application/json"}
        # JetStream's publish is this request; its answer is read here without building a PubAck.
        answer = await client.request(self._subject, message.body, timeout=self._deadline, headers=headers)
        return answer.data

    def _outcome(self, ack: bytes | BaseException) -> Outcome:
        if isinstance(ack, bytes):
            if b'"error"' not in ack:
                return CONFIRMED
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                error = json.loads(ack)["error"]
                return Outcome(
                    False, error=scrub(f"the stream refused it: {error.get('description')}", self._parts)
                )
            return Outcome(False, error="the stream refused it")
        if isinstance(ack, nats.errors.NoRespondersError):
            return Outcome(False, error=f"no stream takes subject {self._subject!r}")
        if isinstance(ack, nats.errors.TimeoutError | TimeoutError):
            return Outcome(False, error="timed out")
        return Outcome(False, error=scrub(f"{type(ack).__name__}: {ack}", self._parts))

    async def _drop(self) -> None:
        async with self._lock:
            await self._reset()

    async def close(self) -> None:
        await self._drop()
