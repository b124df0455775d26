"""The three brokers as the tests see them (RabbitMQ, NATS JetStream, Redis Streams on their local
servers): unique names per test, messages read back with each broker's own client, removed at
the end."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import aiormq
import nats
import redis.asyncio

AMQP_PORT, NATS_PORT, REDIS_PORT = 5672, 4222, 6379


@dataclass
class Got:
    """One message as the broker holds it."""

    id: str
    headers: dict[str, str]
    body: bytes


class Broker:
    """A broker as the tests see it: unique names per test, read back with the broker's own
    client, removed at the end."""

    name = ""

    def __init__(self) -> None:
        self.tag = "rcv_test_" + secrets.token_hex(6)

    async def start(self) -> None: ...

    def url(self, port: int | None = None) -> str:
        """Where the receiver publishes: `port` is a stand-in's (a proxy, a dead port)."""
        raise NotImplementedError

    async def refusing_url(self) -> str:
        """A URL the broker answers but will not take a message at."""
        raise NotImplementedError

    async def messages(self) -> list[Got]:
        raise NotImplementedError

    async def close(self) -> None: ...


class Rabbit(Broker):
    name = "amqp"

    async def start(self) -> None:
        self.connection = await aiormq.connect(f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}/")
        self.channel = await self.connection.channel()
        await self.channel.queue_declare(self.tag)
        self.seen: list[Got] = []

    def url(self, port: int | None = None) -> str:
        return f"amqp://guest:guest@127.0.0.1:{port or AMQP_PORT}/?routing_key={self.tag}"

    async def refusing_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}/?exchange={self.tag}_missing&routing_key=x"

    async def messages(self) -> list[Got]:
        while (got := await self.channel.basic_get(self.tag, no_ack=True)).delivery_tag is not None:
            props = got.header.properties
            headers = {k: str(v) for k, v in (props.headers or {}).items()}
            assert props.delivery_mode == 2  # persistent
            self.seen.append(Got(str(props.message_id), headers, got.body))
        return self.seen

    async def close(self) -> None:
        await self.channel.queue_delete(self.tag)
        await self.connection.close()


class JetStream(Broker):
    name = "nats"

    async def start(self) -> None:
        self.client = await nats.connect(f"nats://127.0.0.1:{NATS_PORT}")
        self.js = self.client.jetstream()
        await self.js.add_stream(name=self.tag, subjects=[self.tag])

    def url(self, port: int | None = None) -> str:
        return f"nats://127.0.0.1:{port or NATS_PORT}?subject={self.tag}"

    async def refusing_url(self) -> str:
        return f"nats://127.0.0.1:{NATS_PORT}?subject={self.tag}_no_stream"

    async def messages(self) -> list[Got]:
        info = await self.js.stream_info(self.tag)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1 if info.state.messages else 0):
            msg = await self.js.get_msg(self.tag, seq)
            headers = dict(msg.headers or {})
            found.append(Got(headers["Nats-Msg-Id"], headers, msg.data or b""))
        return found

    async def close(self) -> None:
        await self.js.delete_stream(self.tag)
        await self.client.close()


class Streams(Broker):
    name = "redis"

    async def start(self) -> None:
        self.client = redis.asyncio.Redis(host="127.0.0.1", port=REDIS_PORT)

    def url(self, port: int | None = None) -> str:
        return f"redis://127.0.0.1:{port or REDIS_PORT}/0?stream={self.tag}"

    async def refusing_url(self) -> str:
        # A key that holds a string: XADD answers WRONGTYPE.
        await self.client.set(f"{self.tag}_string", "x")
        return f"redis://127.0.0.1:{REDIS_PORT}/0?stream={self.tag}_string"

    async def messages(self) -> list[Got]:
        found = []
        for _, fields in await self.client.xrange(self.tag):
            text = {k.decode(): v for k, v in fields.items()}
            headers = {k: v.decode() for k, v in text.items() if k.startswith("webhook-")}
            headers["type"] = text["type"].decode()
            found.append(Got(text["id"].decode(), headers, text["body"]))
        return found

    async def close(self) -> None:
        await self.client.delete(self.tag, f"{self.tag}_string")
        await self.client.aclose()
