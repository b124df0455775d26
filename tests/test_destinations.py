"""Broker destinations against the real servers: one case list, run on RabbitMQ, NATS JetStream and
Redis Streams alike (and on both store backends where the store takes part)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from receiver.outbound.destinations import BlockedAddress
from receiver.outbound.destinations.base import vet_host
from receiver.simulator.provider import SimConfig, Simulator
from tests.brokers import AMQP_PORT, NATS_PORT, REDIS_PORT, Broker, JetStream, Rabbit, Streams
from tests.conftest import SECRET, StackFactory, free_socket, serve, wait_until
from tests.helpers import child_receiver

pytestmark = pytest.mark.anyio

FAST = SimConfig(secret=SECRET, duration_median=0.2, duration_sigma=0.2, seed=7)
FANOUT = {"fanout_retry_schedule": (0.2, 0.2, 0.2), "fanout_timeout": 2}


BROKERS: dict[str, Callable[[], Broker]] = {"amqp": Rabbit, "nats": JetStream, "redis": Streams}


@pytest.fixture(params=list(BROKERS))
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    the_broker = BROKERS[request.param]()
    await the_broker.start()
    try:
        yield the_broker
    finally:
        await the_broker.close()


class Proxy:
    """A TCP forwarder in front of a broker that the test can 'restart': every connection cut,
    nothing listening for a moment, then the same port open again. To the receiver it is the
    broker going away and coming back, without touching the server other tests share."""

    def __init__(self, target: int) -> None:
        self.target = target
        sock = free_socket()
        self.port = sock.getsockname()[1]
        sock.close()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await self._server.wait_closed()


async def subscribe(stack: Any, url: str) -> dict[str, Any]:
    answer = await stack.client.post(f"{stack.url}/v1/subscriptions", json={"url": url, "secret": SECRET})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def events(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    page = (await client.get(f"{url}/v1/events", params={"limit": 100})).json()
    data: list[dict[str, Any]] = page["data"]
    return data


async def test_each_event_published_signed_once_per_attempt(
    make_stack: StackFactory, broker: Broker, database_url: str
) -> None:
    async with make_stack(FAST, database_url=database_url, **FANOUT) as stack:
        sub = await subscribe(stack, broker.url())
        for i in range(3):
            assert (await stack.submit({"model": "m", "prompt": str(i)})).status_code == 200

        async def three_events() -> bool:
            return len(await events(stack.client, stack.url)) == 3

        await wait_until(three_events, timeout=30, what="three events")
        ids = {e["id"] for e in await events(stack.client, stack.url)}

        async def all_published() -> bool:
            return {m.id for m in await broker.messages()} == ids

        await wait_until(all_published, timeout=20, what="every event in the broker")
        got = await broker.messages()
        assert len(got) == 3  # once each: every attempt was confirmed at the first try
        hook = Webhook(SECRET)
        for message in got:
            payload = hook.verify(message.body, message.headers)
            assert payload["id"] == message.id == message.headers["webhook-id"]
            assert payload["object"] == "event"
        sends: dict[str, dict[str, Any]] = {}

        async def all_settled() -> bool:
            # The broker has the message before the confirm is recorded: wait for the record.
            for event_id in ids:
                detail = (await stack.client.get(f"{stack.url}/v1/events/{event_id}")).json()
                (sends[event_id],) = [s for s in detail["sends"] if s["subscription_id"] == sub["id"]]
            return all(send["status"] != "pending" for send in sends.values())

        await wait_until(all_settled, timeout=20, what="every send recorded")
        for send in sends.values():
            assert send["status"] == "delivered" and send["attempts"] == 1
            assert send["attempt_log"][0]["error"] is None
        health = (await stack.client.get(f"{stack.url}/v1/health/subscribers")).json()
        (mine,) = [h for h in health["data"] if h["subscription_id"] == sub["id"]]
        assert mine["delivered"] == 3 and mine["last_success_at"] is not None
        assert mine["last_error"] is None


async def test_replay_publishes_again_under_the_same_id(make_stack: StackFactory, broker: Broker) -> None:
    async with make_stack(FAST, **FANOUT) as stack:
        await subscribe(stack, broker.url())
        video = (await stack.submit()).json()
        await wait_until(lambda: _count(broker, 1), timeout=20, what="the first publish")
        answer = await stack.client.post(f"{stack.url}/v1/events/replay", json={"video_id": video["id"]})
        assert answer.status_code == 200, answer.text
        (event,) = await events(stack.client, stack.url)

        async def both_delivered() -> bool:
            detail = (await stack.client.get(f"{stack.url}/v1/events/{event['id']}")).json()
            return [s["status"] for s in detail["sends"]] == ["delivered", "delivered"]

        await wait_until(both_delivered, timeout=20, what="the replayed publish to be confirmed")
        replay = (await stack.client.get(f"{stack.url}/v1/replays/{answer.json()['id']}")).json()
        assert replay["done"] and replay["last_error"] is None  # a confirm is no failure
        got = await broker.messages()
        if broker.name == "nats":
            # JetStream drops a repeat of a Nats-Msg-Id inside its duplicate window, and acks it.
            assert [m.id for m in got] == [event["id"]]
        else:
            first, again = got
            assert first.id == again.id == event["id"] and first.body == again.body


async def _count(broker: Broker, n: int) -> bool:
    return len(await broker.messages()) >= n


@pytest.mark.parametrize("fault", ["down", "refuses"])
async def test_a_broker_down_or_refusing_is_retried_then_dead_lettered(
    make_stack: StackFactory, broker: Broker, fault: str
) -> None:
    if fault == "down":
        sock = free_socket()  # bound, never listening: connections are refused
        url = broker.url(port=sock.getsockname()[1])
    else:
        url = await broker.refusing_url()
    async with make_stack(FAST, **FANOUT) as stack:
        sub = await subscribe(stack, url)
        healthy = Streams()
        await healthy.start()
        try:
            await subscribe(stack, healthy.url())
            await stack.submit()

            async def dead() -> bool:
                page = (await stack.client.get(f"{stack.url}/v1/dead-letters")).json()
                return any(d["subscription_id"] == sub["id"] for d in page["data"])

            await wait_until(dead, timeout=30, what="the send to be dead-lettered")
            (event,) = await events(stack.client, stack.url)
            detail = (await stack.client.get(f"{stack.url}/v1/events/{event['id']}")).json()
            (send,) = [s for s in detail["sends"] if s["subscription_id"] == sub["id"]]
            assert send["status"] == "dead" and send["attempts"] == 4  # one try and three retries
            assert all(a["error"] for a in send["attempt_log"])
            # The service is unharmed: the other destination got its event, reads and health answer.
            assert [m.id for m in await healthy.messages()] == [event["id"]]
            assert (await stack.client.get(f"{stack.url}/readyz")).status_code == 200
            assert (await stack.client.get(f"{stack.url}/v1/health/subscribers")).status_code == 200
        finally:
            await healthy.close()
    if fault == "down":
        sock.close()


async def test_a_restarted_broker_is_reconnected_to(make_stack: StackFactory, broker: Broker) -> None:
    target = {"amqp": AMQP_PORT, "nats": NATS_PORT, "redis": REDIS_PORT}[broker.name]
    proxy = Proxy(target)
    await proxy.start()
    try:
        async with make_stack(FAST, **FANOUT) as stack:
            await subscribe(stack, broker.url(port=proxy.port))
            await stack.submit()
            await wait_until(lambda: _count(broker, 1), timeout=20, what="the first publish")
            await proxy.stop()  # the broker goes away: every connection cut
            await stack.submit()

            async def retrying() -> bool:
                evts = await events(stack.client, stack.url)
                if len(evts) < 2:
                    return False
                detail = (await stack.client.get(f"{stack.url}/v1/events/{evts[0]['id']}")).json()
                return any(s["attempts"] >= 1 and s["status"] == "pending" for s in detail["sends"])

            await wait_until(retrying, timeout=20, what="a failed attempt while the broker is away")
            await proxy.start()  # back on the same port: no restart of the receiver
            await wait_until(lambda: _count(broker, 2), timeout=20, what="the publish after the restart")
            assert len({m.id for m in await broker.messages()}) == 2
    finally:
        with contextlib.suppress(AssertionError):
            await proxy.stop()


async def test_sigkill_while_publishing_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    simulator = Simulator(SimConfig(secret=SECRET, duration_median=1.0, duration_sigma=0.6, seed=3))
    total = 60
    async with (
        serve(simulator.app) as provider_url,
        child_receiver(tmp_path, provider_url) as receiver,
        httpx.AsyncClient(timeout=10) as client,
    ):
        receiver.env.update(RECEIVER_OUTBOUND_ALLOW="127.0.0.0/8", RECEIVER_FANOUT_RETRY_SCHEDULE="0.5,1,1,1")
        await receiver.start(client)
        answer = await client.post(
            f"{receiver.url}/v1/subscriptions", json={"url": broker.url(), "secret": SECRET}
        )
        assert answer.status_code == 200, answer.text
        for i in range(total):
            assert (
                await client.post(f"{receiver.url}/v1/videos", json={"model": "m", "prompt": str(i)})
            ).status_code == 200
        await wait_until(lambda: _count(broker, 5), timeout=30, what="the first publishes")
        receiver.kill()
        assert len({m.id for m in await broker.messages()}) < total  # killed mid-publishing
        await receiver.start(client)

        async def all_published() -> bool:
            page = (await client.get(f"{receiver.url}/v1/events", params={"limit": 100})).json()
            ids = {e["id"] for e in page["data"]}
            return len(ids) == total and ids <= {m.id for m in await broker.messages()}

        await wait_until(all_published, timeout=90, what="every event in the broker at least once")


async def test_broker_passwords_never_shown_nor_logged(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    password = "pw-" + secrets.token_hex(8)
    url = f"amqp://guest:{password}@127.0.0.1:{AMQP_PORT}/?exchange=amq.topic&routing_key=x"
    caplog.set_level(logging.DEBUG)
    async with make_stack(FAST, **FANOUT) as stack:
        sub = await subscribe(stack, url)
        shown = f"amqp://guest:***@127.0.0.1:{AMQP_PORT}/?exchange=amq.topic&routing_key=x"
        assert sub["url"] == shown
        await stack.submit()

        async def dead() -> bool:
            page = (await stack.client.get(f"{stack.url}/v1/dead-letters")).json()
            return bool(page["data"])

        # RabbitMQ refuses the login: retried, then dead-lettered, the reason kept without the password.
        await wait_until(dead, timeout=30, what="the refused login to be dead-lettered")
        reads = [
            f"/v1/subscriptions/{sub['id']}",
            "/v1/subscriptions",
            "/v1/health/subscribers",
            "/v1/dead-letters",
            f"/v1/events/{(await events(stack.client, stack.url))[0]['id']}",
        ]
        for path in reads:
            text = (await stack.client.get(f"{stack.url}{path}")).text
            assert password not in text, path
        assert shown in (await stack.client.get(f"{stack.url}/v1/subscriptions/{sub['id']}")).text
    assert password not in caplog.text


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("amqp://guest:guest@10.0.0.1:5672/?routing_key=q", "invalid_url"),  # plain, outside the allow list
        ("amqps://guest:guest@10.0.0.1:5671/?routing_key=q", "url_not_allowed"),
        ("tls://169.254.169.254:4222?subject=s", "url_not_allowed"),
        ("rediss://0x0a000001:6379/0?stream=s", "url_not_allowed"),
        ("nats://127.0.0.1:4222", "invalid_url"),  # no subject
        ("nats://127.0.0.1:4222?subject=a.*", "invalid_url"),
        ("redis://127.0.0.1:6379/0", "invalid_url"),  # no stream
        ("redis://127.0.0.1:6379/x?stream=s", "invalid_url"),
        ("amqp://127.0.0.1:5672/", "invalid_url"),  # nowhere to route
        ("ftp://127.0.0.1/x", "invalid_url"),
        ("https://user:pw@example.com/hook", "invalid_url"),  # http still takes no credentials
    ],
)
async def test_broker_urls_pass_the_outbound_rule(make_stack: StackFactory, url: str, code: str) -> None:
    async with make_stack(FAST, outbound_allow=_loopback()) as stack:
        answer = await stack.client.post(f"{stack.url}/v1/subscriptions", json={"url": url})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == code
        assert answer.json()["error"]["param"] == "url"
        listed = (await stack.client.get(f"{stack.url}/v1/subscriptions")).json()
        assert listed["data"] == []


def _loopback() -> tuple[Any, ...]:
    return (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.mark.parametrize(
    ("url", "allow", "blocked"),
    [
        ("redis://localhost:6379/0?stream=s", (), True),  # loopback by name, no allow list
        ("rediss://127.1:6379/0?stream=s", (), True),  # a short spelling of loopback
        ("amqps://[::ffff:10.0.0.1]:5671/?routing_key=q", (), True),
        ("nats://localhost:4222?subject=s", ("127.0.0.0/8",), False),
        ("nats://localhost:4222?subject=s", ("10.0.0.0/8",), True),
    ],
)
async def test_the_host_is_checked_again_when_connecting(
    url: str, allow: tuple[str, ...], blocked: bool
) -> None:
    networks = tuple(ipaddress.ip_network(n) for n in allow)
    if blocked:
        with pytest.raises(BlockedAddress):
            await vet_host(url, networks, 1)
    else:
        assert await vet_host(url, networks, 1) == "127.0.0.1"
