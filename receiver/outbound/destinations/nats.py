"""NATS JetStream destination (nats-py): delivered when the stream acknowledges the publish."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from receiver.outbound.addresses import Network
from receiver.outbound.destinations.base import BlockedAddress, Message, Outcome, scrub, vet_host

__all__ = ["NatsDestination", "nats_subject"]

CONFIRMED = Outcome(True)
NO_RESPONDERS = "503"  # the server's answer when no stream takes the subject


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
        # The stream's acknowledgements come to one wildcard subscription of this client's:
        # each publish's reply subject is the inbox and a serial number, awaited by its future.
        self._inbox = ""
        self._serial = 0
        self._waiting: dict[str, asyncio.Future[Msg]] = {}

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
            self._inbox = self._client.new_inbox()
            await self._client.subscribe(self._inbox + ".*", cb=self._answered)
            return self._client

    async def _answered(self, msg: Msg) -> None:
        waiter = self._waiting.pop(msg.subject, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    async def _reset(self) -> None:
        client, self._client = self._client, None
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("the connection was closed"))
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), timeout=2)

    async def publish(self, message: Message) -> Outcome:
        (outcome,) = await self.publish_many([message])
        return outcome

    async def publish_many(self, messages: list[Message]) -> list[Outcome]:
        """Every message published before any acknowledgement is awaited (the client sends
        them together; the stream acknowledges each by its own reply)."""
        replies: list[str] = []
        try:
            async with asyncio.timeout(self._deadline):
                client = await self._ready()
                waiting, loop = self._waiting, asyncio.get_running_loop()
                waiters = []
                for message in messages:
                    self._serial += 1
                    reply = f"{self._inbox}.{self._serial}"
                    replies.append(reply)
                    waiters.append(waiting.setdefault(reply, loop.create_future()))
                    headers = {
                        **message.headers(),
                        "Nats-Msg-Id": message.id,
                        "content-type": "application/json",
                    }
                    await client.publish(self._subject, message.body, reply=reply, headers=headers)
                acks = await asyncio.gather(*waiters, return_exceptions=True)
        except BlockedAddress as exc:
            return [Outcome(False, error=str(exc), reached=False)] * len(messages)
        except TimeoutError:
            await self._drop()
            return [Outcome(False, error="timed out")] * len(messages)
        except Exception as exc:
            await self._drop()
            return [Outcome(False, error=scrub(f"{type(exc).__name__}: {exc}", self._parts))] * len(messages)
        finally:
            for reply in replies:
                self._waiting.pop(reply, None)
        outcomes = [self._outcome(ack) for ack in acks]
        if any(isinstance(ack, BaseException) for ack in acks):
            await self._drop()  # the connection failed: made again on next use
        return outcomes

    def _outcome(self, ack: Msg | BaseException) -> Outcome:
        if isinstance(ack, BaseException):
            return Outcome(False, error=scrub(f"{type(ack).__name__}: {ack}", self._parts))
        status = ack.headers.get("Status") if ack.headers else None
        if status == NO_RESPONDERS:
            return Outcome(False, error=f"no stream takes subject {self._subject!r}")
        if status is not None:
            return Outcome(False, error=f"the server answered status {status}"[:300])
        if b'"error"' not in ack.data:
            return CONFIRMED  # {"stream": ..., "seq": ...}
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            described = json.loads(ack.data)["error"].get("description")
            return Outcome(False, error=scrub(f"the stream refused it: {described}", self._parts))
        return Outcome(False, error="the stream refused it")

    async def _drop(self) -> None:
        async with self._lock:
            await self._reset()

    async def close(self) -> None:
        await self._drop()
