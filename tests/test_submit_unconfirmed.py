"""A paid task is never lost: submits whose outcome the provider leaves unknown are kept, adopted by
their delivery, never submitted twice; odd statuses are read, not refused; orphans are swept.

Each runs the real service over loopback against the simulator (behind a front that answers as a
test needs), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.rules.records import NewTask
from receiver.simulator.provider import SimConfig, Simulator
from tests.conftest import SECRET, ReceiverProcess, StackFactory, free_socket, serve, sign_headers, wait_until

pytestmark = pytest.mark.anyio

FOX = {"model": "seedance-2.0", "prompt": "a red fox"}


class Clock:
    """Real time plus an offset the test moves forward (the sweep's windows are long)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def stats(stack: Any) -> dict[str, Any]:
    answer = await stack.client.get(f"{stack.url}/v1/stats")
    assert answer.status_code == 200, answer.text
    tasks: dict[str, Any] = answer.json()["tasks"]
    return tasks


async def adopted_as(stack: Any, video_id: str, status: str) -> dict[str, Any]:
    """Wait until the task is known by its video id (a delivery adopted it) and has `status`."""
    seen: dict[str, Any] = {}

    async def reached() -> bool:
        answer = await stack.client.get(f"{stack.url}/v1/videos/{video_id}")
        if answer.status_code == 404:
            return False
        assert answer.status_code == 200, answer.text
        seen.update(answer.json())
        return bool(seen["status"] == status)

    await wait_until(reached, timeout=20, what=f"{video_id} to be adopted as {status}")
    return seen


def unconfirmed(answer: httpx.Response, status: int) -> None:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == "submit_unconfirmed", error
    assert "same Idempotency-Key is safe" in error["message"]
    assert "/webhooks/" not in answer.text


async def test_a_create_that_stalls_past_the_timeout_is_kept_then_adopted(
    make_stack: StackFactory, database_url: str
) -> None:
    # The provider creates the task, then answers after our deadline; its delivery comes later.
    sim = SimConfig(
        secret=SECRET, duration_median=0.2, duration_sigma=0.0, answer_delay=4, delivery_delay=2.5
    )
    async with make_stack(sim, database_url=database_url, provider_timeout=1) as stack:
        key = {"Idempotency-Key": "order-17"}
        first = await stack.submit(FOX, headers=key)
        unconfirmed(first, 504)
        assert len(stack.simulator.tasks) == 1  # the provider has it: paid once
        counted = await stats(stack)
        assert counted["by_status"].get("unconfirmed") == 1 and counted["open"] == 0
        assert counted["oldest_open_created_at"] is None

        again = await stack.submit(FOX, headers=key)
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "submit_unconfirmed"
        assert len(stack.simulator.tasks) == 1  # a retry never calls the provider again

        (video_id,) = stack.simulator.tasks

        async def adopted() -> bool:
            return (await stack.submit(FOX, headers=key)).status_code == 200

        await wait_until(adopted, timeout=20, what="the delivery to adopt the task")
        replayed = await stack.submit(FOX, headers=key)
        assert replayed.headers["idempotent-replayed"] == "true"
        assert replayed.json()["id"] == video_id
        video = await stack.wait_status(video_id, "completed")
        assert video["receiver"]["resolved_by"] == "webhook"

        async def listed() -> bool:
            page = (await stack.client.get(f"{stack.url}/v1/videos")).json()["data"]
            assert [v["id"] for v in page] in ([], [video_id])
            return bool(page)

        # Lists read behind the commit horizon (PostgreSQL): the task shows up within moments.
        await wait_until(listed, timeout=10, what="the adopted task in the list")
        events = (await stack.client.get(f"{stack.url}/v1/events", params={"video_id": video_id})).json()
        assert len(events["data"]) == 1
        assert len(stack.simulator.tasks) == 1
        assert (await stats(stack))["by_status"].get("unconfirmed") is None


async def test_a_delivery_before_the_timeout_makes_the_submit_an_answer(make_stack: StackFactory) -> None:
    sim = SimConfig(secret=SECRET, duration_median=0.1, duration_sigma=0.0, answer_delay=4)
    async with make_stack(sim, provider_timeout=2) as stack:
        answer = await stack.submit(FOX)
        assert answer.status_code == 200, answer.text
        (video_id,) = stack.simulator.tasks
        assert answer.json()["id"] == video_id


class Front:
    """The simulator behind a front whose answers to creates a test chooses: the task is created
    at the simulator (so it is paid for and delivered) whatever the front then answers."""

    def __init__(self, simulator_url: str, answer: str) -> None:
        self.simulator_url = simulator_url
        self.answer = answer
        self.creates = 0
        self.app = Starlette(
            routes=[
                Route("/v1/videos", self.create, methods=["POST"]),
                Route("/v1/videos/{video_id}", self.retrieve, methods=["GET"]),
            ]
        )

    async def create(self, request: Request) -> Response:
        self.creates += 1
        if self.answer == "refuse":
            body = {"error": {"message": "prompt refused by the safety system"}}
            return Response(json.dumps(body), 400, media_type="application/json")
        async with httpx.AsyncClient(timeout=10) as client:
            made = await client.post(f"{self.simulator_url}/v1/videos", content=await request.body())
        video = made.json()
        if self.answer == "500":
            return Response(b'{"error":{"message":"internal"}}', 500, media_type="application/json")
        if self.answer == "garbage":
            return Response(b"<html>oops</html>", 200, media_type="text/html")
        video["status"] = self.answer  # an odd status word
        return Response(json.dumps(video), 200, media_type="application/json")

    async def retrieve(self, request: Request) -> Response:
        async with httpx.AsyncClient(timeout=10) as client:
            got = await client.get(f"{self.simulator_url}/v1/videos/{request.path_params['video_id']}")
        return Response(got.content, got.status_code, media_type="application/json")


@contextlib.asynccontextmanager
async def fronted(
    make_stack: StackFactory, answer: str, **overrides: Any
) -> AsyncIterator[tuple[Any, Simulator, Front]]:
    simulator = Simulator(SimConfig(secret=SECRET, duration_median=0.3, duration_sigma=0.0))
    async with serve(simulator.app) as simulator_url:
        front = Front(simulator_url, answer)
        async with serve(front.app) as front_url, make_stack(provider_url=front_url, **overrides) as stack:
            yield stack, simulator, front


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("generating", "in_progress"),
        ("starting", "queued"),
        ("rendering", "in_progress"),
        ("SUCCEEDED", "completed"),
    ],
)
async def test_odd_statuses_in_a_submit_answer_are_read_not_refused(
    make_stack: StackFactory, word: str, status: str
) -> None:
    async with fronted(make_stack, word) as (stack, simulator, _front):
        answer = await stack.submit(FOX)
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == status
        video_id = answer.json()["id"]
        assert list(simulator.tasks) == [video_id]
        await stack.wait_status(video_id, "completed")


@pytest.mark.parametrize(("answer", "status"), [("500", 502), ("garbage", 502)])
async def test_an_answer_that_cannot_be_read_keeps_the_task_unconfirmed(
    make_stack: StackFactory, database_url: str, answer: str, status: int
) -> None:
    async with fronted(make_stack, answer, database_url=database_url) as (stack, simulator, front):
        key = {"Idempotency-Key": f"k-{answer}"}
        unconfirmed(await stack.submit(FOX, headers=key), status)
        (video_id,) = simulator.tasks
        # The simulator's delivery, signed, on the task's own URL adopts it.
        video = await adopted_as(stack, video_id, "completed")
        assert video["receiver"]["resolved_by"] == "webhook"
        replayed = await stack.submit(FOX, headers=key)
        assert replayed.status_code == 200 and replayed.json()["id"] == video_id
        assert front.creates == 1


async def test_a_refusal_forgets_the_task_and_frees_the_key(make_stack: StackFactory) -> None:
    async with fronted(make_stack, "refuse") as (stack, _simulator, front):
        key = {"Idempotency-Key": "k-refused"}
        for _ in range(2):
            answer = await stack.submit(FOX, headers=key)
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "provider_rejected"
        assert front.creates == 2  # nothing was created, so asking again is safe
        counted = await stats(stack)
        assert counted["total"] == 0


async def test_the_sweep_makes_orphans_unconfirmed_then_ends_them(
    make_stack: StackFactory, database_url: str
) -> None:
    clock = Clock()
    async with make_stack(clock=clock, database_url=database_url) as stack:
        token = "orphan-token-" + "x" * 30
        store = stack.store
        created = await store.create_task(
            NewTask(
                token_hash=hashlib.sha256(token.encode()).hexdigest(),
                model="seedance-2.0",
                request=FOX,
                callback_url=None,
                idem_scope="",
                idem_key="k-orphan",
                request_hash=None,
                created_at=clock(),
                expires_at=None,
            )
        )
        assert created.state == "created"
        sweeper = stack.app.state.sweeper
        assert await sweeper.sweep() == (0, 0)  # still within the provider's deadline
        assert (await stats(stack))["by_status"] == {"submitting": 1}

        clock.offset += stack.settings.provider_timeout + 16
        assert await sweeper.sweep() == (1, 0)
        counted = await stats(stack)
        assert counted["by_status"] == {"unconfirmed": 1} and counted["open"] == 0

        clock.offset += stack.settings.submit_confirm_window
        assert await sweeper.sweep() == (0, 1)
        assert (await stats(stack))["total"] == 0
        # Its callback URL is unknown now.
        body = json.dumps({"id": "video_late", "object": "video", "status": "completed"}).encode()
        late = await stack.client.post(
            f"{stack.url}/webhooks/{token}", content=body, headers=sign_headers(body, timestamp=int(clock()))
        )
        assert late.status_code == 404 and late.json()["error"]["code"] == "unknown_token"


@pytest.mark.slow
async def test_a_create_in_flight_when_the_receiver_is_killed_is_adopted_after_restart(
    tmp_path: Path, database_url: str
) -> None:
    # The provider holds its answer (past the kill, not past the test); its delivery comes once
    # the receiver is back.
    simulator = Simulator(
        SimConfig(secret=SECRET, duration_median=0.2, duration_sigma=0.0, answer_delay=8, delivery_delay=3)
    )
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    async with serve(simulator.app) as provider_url, httpx.AsyncClient(timeout=10) as client:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
        env.update(
            RECEIVER_PORT=str(port),
            RECEIVER_DATABASE_URL=database_url,
            RECEIVER_PROVIDER_URL=provider_url,
            RECEIVER_WEBHOOK_SECRETS=SECRET,
            RECEIVER_MEDIA_DIR=str(tmp_path / "media"),
        )
        receiver = ReceiverProcess(env, port, tmp_path)
        try:
            await receiver.start(client)
            submit = asyncio.create_task(
                client.post(f"{receiver.url}/v1/videos", json=FOX, headers={"Idempotency-Key": "k-kill"})
            )
            await wait_until(
                lambda: len(simulator.tasks) == 1, timeout=10, what="the create to reach the provider"
            )
            receiver.kill()
            with contextlib.suppress(httpx.HTTPError):
                await submit
            await receiver.start(client)
            (video_id,) = simulator.tasks

            async def completed() -> bool:
                answer = await client.get(f"{receiver.url}/v1/videos/{video_id}")
                return answer.status_code == 200 and answer.json()["status"] == "completed"

            await wait_until(completed, timeout=30, what="the delivery to adopt the orphan")
            video = (await client.get(f"{receiver.url}/v1/videos/{video_id}")).json()
            assert video["receiver"]["resolved_by"] == "webhook"
            retry = await client.post(
                f"{receiver.url}/v1/videos", json=FOX, headers={"Idempotency-Key": "k-kill"}
            )
            assert retry.status_code == 200 and retry.json()["id"] == video_id
            assert len(simulator.tasks) == 1
            counted = (await client.get(f"{receiver.url}/v1/stats")).json()["tasks"]
            assert counted["by_status"] == {"completed": 1}
        finally:
            receiver.stop()
