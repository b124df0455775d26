"""The simulated provider under `serve` runs for months: its memory stays bounded."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.simulator.provider import SimConfig, Simulator
from tests.conftest import SECRET, serve, wait_until

pytestmark = pytest.mark.anyio


async def test_a_bounded_simulator_forgets_old_tasks_and_sent_bodies() -> None:
    heard: list[str] = []

    async def hook(request: Request) -> Response:
        heard.append(request.headers["webhook-id"])
        return Response(status_code=200)

    sink = Starlette(routes=[Route("/webhooks/{token}", hook, methods=["POST"])])
    config = SimConfig(
        secret=SECRET, duration_median=0.05, duration_sigma=0.0, duplicate_rate=1.0, max_tasks=3
    )
    simulator = Simulator(config)
    async with serve(sink) as sink_url, serve(simulator.app) as url, httpx.AsyncClient() as client:
        for n in range(10):
            body = {"model": "m", "prompt": str(n), "callback_url": f"{sink_url}/webhooks/{'t' * 20}{n}"}
            assert (await client.post(f"{url}/v1/videos", json=body)).status_code == 200
        # Every task's delivery and its duplicate go out with the same bytes, then nothing is kept.
        await wait_until(lambda: len(heard) == 20, timeout=10, what="every delivery and its copy")
        await wait_until(lambda: not simulator._bodies and not simulator._queued, timeout=5)
        assert len(set(heard)) == 10
        # Tasks owed a send were kept past the bound; the next create trims back to it.
        body = {"model": "m", "prompt": "last"}
        assert (await client.post(f"{url}/v1/videos", json=body)).status_code == 200
        assert len(simulator.tasks) == 3
        assert simulator.acknowledged == set()


async def test_an_unbounded_simulator_keeps_everything_for_the_tests() -> None:
    simulator = Simulator(SimConfig(secret=SECRET, duration_median=3600))
    async with serve(simulator.app) as url, httpx.AsyncClient() as client:
        for n in range(5):
            assert (
                await client.post(f"{url}/v1/videos", json={"model": "m", "prompt": str(n)})
            ).status_code == 200
        assert len(simulator.tasks) == 5
