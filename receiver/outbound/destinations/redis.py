"""Redis Streams destination (redis-py asyncio): delivered when XADD answers with the entry id."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from receiver.outbound.addresses import Network
from receiver.outbound.destinations.base import BlockedAddress, Message, Outcome, scrub, vet_host

__all__ = ["RedisDestination", "redis_stream"]

CONFIRMED = Outcome(True)


def _fields(message: Message) -> dict[Any, Any]:
    return {"id": message.id, "type": message.type, "body": message.body, **message.headers()}


def redis_stream(url: str) -> tuple[str, int]:
    """(stream, db) from the URL; ValueError when it names no stream or a bad db."""
    parts = urlsplit(url)
    stream = parse_qs(parts.query).get("stream", [""])[0]
    if not stream:
        raise ValueError("a redis URL needs ?stream=")
    db = parts.path.strip("/") or "0"
    if not db.isascii() or not db.isdigit() or int(db) > 10_000:
        raise ValueError("a redis URL's path is its database number")
    return stream, int(db)


class RedisDestination:
    """A bounded pool of connections per destination. redis-py's own retries are off: a retried
    XADD could add an entry twice within one attempt; the dispatcher's schedule retries instead
    (at least once, under the same id)."""

    def __init__(self, url: str, allow: tuple[Network, ...], deadline: float, connections: int) -> None:
        self._parts = urlsplit(url)
        self._allow = allow
        self._deadline = deadline
        self._connections = connections
        self._stream, self._db = redis_stream(url)
        self._client: redis.asyncio.Redis | None = None
        self._lock = asyncio.Lock()

    async def _ready(self) -> redis.asyncio.Redis:
        async with self._lock:
            if self._client is not None:
                return self._client
            parts = self._parts
            tls = parts.scheme == "rediss"
            address = await vet_host(parts.geturl(), self._allow, 6379)
            tls_options: dict[str, Any] = {"connection_class": redis.asyncio.SSLConnection} if tls else {}
            pool = redis.asyncio.BlockingConnectionPool(
                # TLS checks the certificate against the name, so it connects by name.
                host=parts.hostname if tls else address,
                port=parts.port or 6379,
                db=self._db,
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                max_connections=self._connections,
                timeout=self._deadline,
                socket_connect_timeout=self._deadline,
                socket_timeout=self._deadline,
                retry=Retry(NoBackoff(), 0),
                **tls_options,
            )
            self._client = redis.asyncio.Redis.from_pool(pool)  # owns the pool: aclose() closes it
            return self._client

    async def publish(self, message: Message) -> Outcome:
        (outcome,) = await self.publish_many([message])
        return outcome

    async def publish_many(self, messages: list[Message]) -> list[Outcome]:
        """The XADDs in one pipeline (one write, one round trip, no transaction): each entry
        is confirmed by its own reply, an entry id, or refused by its own error."""
        try:
            async with asyncio.timeout(self._deadline):
                client = await self._ready()
                if len(messages) == 1:
                    replies: list[Any] = [await client.xadd(self._stream, _fields(messages[0]))]
                else:
                    async with client.pipeline(transaction=False) as pipe:
                        for message in messages:
                            pipe.xadd(self._stream, _fields(message))
                        replies = await pipe.execute(raise_on_error=False)
        except BlockedAddress as exc:
            return [Outcome(False, error=str(exc), reached=False)] * len(messages)
        except TimeoutError:
            await self._drop()
            return [Outcome(False, error="timed out")] * len(messages)
        except redis.exceptions.ResponseError as exc:
            return [Outcome(False, error=scrub(f"the server refused it: {exc}", self._parts))] * len(messages)
        except Exception as exc:
            await self._drop()
            return [Outcome(False, error=scrub(f"{type(exc).__name__}: {exc}", self._parts))] * len(messages)
        return [
            Outcome(False, error=scrub(f"the server refused it: {reply}", self._parts))
            if isinstance(reply, Exception)
            else CONFIRMED
            for reply in replies
        ]

    async def _drop(self) -> None:
        async with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), timeout=2)

    async def close(self) -> None:
        await self._drop()
