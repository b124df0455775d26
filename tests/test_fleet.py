"""Two `receiver serve` processes on one PostgreSQL database behind one public URL.

Copies of deliveries are split across both, lost deliveries are polled to their end by the
fleet (never by two processes at once), one process is SIGKILLed mid-run and the other finishes
every task and every send; each subscriber gets each event under one id; an SSE client on one
process sees the events the other recorded."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from receiver.rules.records import dedupe_base
from receiver.simulator.provider import SimConfig, Simulator
from tests.conftest import SECRET, ReceiverProcess, Subscriber, free_socket, serve, wait_until

pytestmark = pytest.mark.anyio

TASKS = 60
FAULTS = SimConfig(
    secret=SECRET,
    duration_median=1.0,
    duration_sigma=0.5,
    fail_rate=0.2,
    drop_rate=0.3,
    duplicate_rate=0.5,
    reorder_rate=0.1,
    seed=7,
)


class Balancer:
    """The public URL: round robin over the processes, skipping one that does not answer (as a
    load balancer's health check would)."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self._next = itertools.count()
        self.http = httpx.AsyncClient(timeout=15)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k.lower() != b"host"]
        query = scope["query_string"].decode()
        path = scope["path"] + (f"?{query}" if query else "")
        start = next(self._next)
        for i in range(len(self.backends)):
            backend = self.backends[(start + i) % len(self.backends)]
            try:
                answer = await self.http.request(
                    scope["method"], backend + path, content=body, headers=headers
                )
            except httpx.TransportError:
                continue
            await send(
                {
                    "type": "http.response.start",
                    "status": answer.status_code,
                    "headers": [
                        (k.encode(), v.encode())
                        for k, v in answer.headers.items()
                        if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
                    ],
                }
            )
            await send({"type": "http.response.body", "body": answer.content})
            return
        await send({"type": "http.response.start", "status": 502, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class GetWatch:
    """Wraps the simulator: slows each GET a little and records the most GETs of one video in
    flight at once (two processes polling one task together would show as 2)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.in_flight: dict[str, int] = {}
        self.most = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "GET" or not path.startswith("/v1/videos/"):
            await self.app(scope, receive, send)
            return
        video = path.rsplit("/", 1)[-1]
        self.in_flight[video] = self.in_flight.get(video, 0) + 1
        self.most = max(self.most, self.in_flight[video])
        try:
            await asyncio.sleep(0.05)  # wait-ok: widens each GET so overlaps would be seen
            await self.app(scope, receive, send)
        finally:
            self.in_flight[video] -= 1


@contextlib.asynccontextmanager
async def fleet(
    tmp_path: Path, database_url: str, provider_url: str, public: str
) -> AsyncIterator[list[ReceiverProcess]]:
    processes = []
    for n in range(2):
        sock = free_socket()
        port = sock.getsockname()[1]
        sock.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
        env.update(
            RECEIVER_PORT=str(port),
            RECEIVER_DATABASE_URL=database_url,
            RECEIVER_PUBLIC_URL=public,
            RECEIVER_PROVIDER_URL=provider_url,
            RECEIVER_PROVIDER_TIMEOUT="2",
            RECEIVER_WEBHOOK_SECRETS=SECRET,
            RECEIVER_OUTBOUND_ALLOW="127.0.0.0/8",
            RECEIVER_POLL_AFTER="1",
            RECEIVER_POLL_MAX_INTERVAL="2",
            RECEIVER_POLL_RATE="1000",
            RECEIVER_FANOUT_TIMEOUT="2",
            RECEIVER_FANOUT_RETRY_SCHEDULE="1,1,1,1,1,1,1,1,1,1",
        )
        home = tmp_path / f"p{n}"
        home.mkdir()
        processes.append(ReceiverProcess(env, port, home))
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()


@pytest.mark.slow
async def test_two_processes_one_database_one_public_url(tmp_path: Path, postgres_url: str) -> None:
    simulator = Simulator(FAULTS)
    watch = GetWatch(simulator.app)
    subscriber = Subscriber()
    balancer_sock = free_socket()
    public = f"http://127.0.0.1:{balancer_sock.getsockname()[1]}"
    async with (
        serve(watch) as provider_url,
        serve(subscriber.app) as subscriber_url,
        fleet(tmp_path, postgres_url, provider_url, public) as (a, b),
        httpx.AsyncClient(timeout=15) as client,
    ):
        balancer = Balancer([a.url, b.url])
        await a.start(client)
        await b.start(client)  # both migrate at once against one database: the lock orders them
        async with serve(balancer, balancer_sock):
            answer = await client.post(f"{public}/v1/subscriptions", json={"url": f"{subscriber_url}/hook"})
            assert answer.status_code == 200, answer.text

            # An SSE reader on process A, recording what it sees.
            streamed: list[str] = []
            connected = asyncio.Event()

            async def read_stream() -> None:
                async with client.stream("GET", f"{a.url}/v1/events/stream", timeout=None) as stream:
                    async for line in stream.aiter_lines():
                        if line.startswith(": connected"):
                            connected.set()
                        elif line.startswith("data: "):
                            streamed.append(json.loads(line[6:])["data"]["id"])

            reader = asyncio.create_task(read_stream())
            await asyncio.wait_for(connected.wait(), timeout=10)

            async def submit(i: int) -> str:
                body = {"model": "seedance-2.0", "prompt": f"scene {i}"}
                response = await client.post(
                    f"{public}/v1/videos", json=body, headers={"Idempotency-Key": f"k{i}"}
                )
                assert response.status_code == 200, response.text
                return str(response.json()["id"])

            videos = await asyncio.gather(*(submit(i) for i in range(TASKS)))

            async def settled(url: str, least: int) -> bool:
                done = 0
                for status in ("completed", "failed"):
                    after = None
                    while True:
                        params: dict[str, Any] = {"status": status, "limit": 100}
                        if after:
                            params["after"] = after
                        page = (await client.get(f"{url}/v1/videos", params=params)).json()
                        done += len(page["data"])
                        if not page["has_more"]:
                            break
                        after = page["data"][-1]["id"]
                return done >= least

            await wait_until(lambda: settled(a.url, TASKS // 4), timeout=60, what="the first results")
            b.kill()  # mid-run: its claimed polls and sends must be taken over by A
            await wait_until(lambda: settled(a.url, TASKS), timeout=120, what="every task to end on A")

            conn = await asyncpg.connect(postgres_url)
            try:
                tasks = {
                    r["video_id"]: r["status"] for r in await conn.fetch("SELECT video_id, status FROM tasks")
                }
                events = {r["video_id"]: r["id"] for r in await conn.fetch("SELECT video_id, id FROM events")}
                per_task = await conn.fetchval(
                    "SELECT max(n) FROM (SELECT count(*) AS n FROM events GROUP BY task_pk) x"
                )
                kept = await conn.fetch("SELECT dedupe_key FROM deliveries")
                stored = {dedupe_base(r["dedupe_key"]) for r in kept}
                resolved = dict(
                    await conn.fetch("SELECT resolved_by, count(*) FROM tasks GROUP BY resolved_by")
                )
            finally:
                await conn.close()
            assert len(tasks) == TASKS and sorted(tasks) == sorted(videos)
            wrong = {v: (tasks[v], t.final) for v, t in simulator.tasks.items() if tasks[v] != t.final}
            assert not wrong, f"tasks not at the provider's final state: {wrong}"
            assert per_task == 1 and len(events) == TASKS, "one terminal result, one event"
            missing = {m for m in simulator.acknowledged if f"msg:{m}" not in stored}
            assert not missing, f"acknowledged deliveries not stored: {missing}"
            assert resolved.get("webhook", 0) > 0 and resolved.get("poll", 0) > 0
            assert watch.most == 1, "a task was polled by two processes at once"

            # Every send finishes on A, each event under one id.
            await wait_until(lambda: set(events.values()) <= subscriber.ids, timeout=60, what="every send")
            by_video: dict[str, set[str]] = {}
            for received in subscriber.received:
                video = json.loads(received.body)["data"]["id"]
                by_video.setdefault(video, set()).add(received.webhook_id)
            assert by_video == {v: {e} for v, e in events.items()}

            # The stream on A showed what B recorded too: every event of the run.
            await wait_until(lambda: set(streamed) >= set(videos), timeout=30, what="the stream to catch up")
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await reader
        await balancer.http.aclose()
