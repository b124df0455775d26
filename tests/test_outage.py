"""A delivery outage over real sockets: noticed within seconds, said in the route, the metric and
the log, polled through early, and the recovery noticed too."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from receiver.simulator.provider import SimConfig
from tests.conftest import SECRET, StackFactory, wait_until

pytestmark = pytest.mark.anyio

QUICK = SimConfig(secret=SECRET, duration_median=0.3, duration_sigma=0.2, seed=11)
MODEL = "seedance-2.0"


async def health_of(stack: Any) -> dict[str, Any]:
    answer = await stack.client.get(f"{stack.url}/v1/health/deliveries")
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    assert body["object"] == "list" and body["has_more"] is False
    return next((h for h in body["data"] if h["model"] == MODEL), {"state": "unknown"})


async def submit_all(stack: Any, count: int) -> list[str]:
    return [(await stack.submit({"model": MODEL, "prompt": str(i)})).json()["id"] for i in range(count)]


async def settle_all(stack: Any, ids: list[str]) -> list[dict[str, Any]]:
    return [await stack.wait_status(video_id, "completed", timeout=30) for video_id in ids]


@pytest.mark.slow
async def test_outage_noticed_polled_through_and_recovery_noticed(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="receiver.workers.schedule")
    async with make_stack(QUICK, poll_after=1) as stack:
        await settle_all(stack, await submit_all(stack, 25))

        async def state_is(wanted: str) -> bool:
            return (await health_of(stack))["state"] == wanted

        await wait_until(lambda: state_is("arriving"), timeout=15, what="deliveries to count as arriving")
        metrics = (await stack.client.get(f"{stack.url}/metrics")).text
        assert f'receiver_delivery_health{{model="{MODEL}"}} 1.0' in metrics

        stack.simulator.deliveries_stopped = True
        during = await submit_all(stack, 15)
        await wait_until(lambda: state_is("stopped"), timeout=15, what="the outage to be noticed")
        health = await health_of(stack)
        assert health["since"] is not None and health["checked_at"] >= health["since"]
        evidence = health["evidence"]
        assert set(evidence) == {
            "delivered",
            "missed",
            "overdue",
            "expected_since_last_delivery",
            "last_delivery_at",
        }
        assert evidence["expected_since_last_delivery"] >= 8
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert any("deliveries stopped arriving for model seedance-2.0" in r.getMessage() for r in warnings)
        metrics = (await stack.client.get(f"{stack.url}/metrics")).text
        assert f'receiver_delivery_health{{model="{MODEL}"}} 0.0' in metrics
        # Polling finds every result of the outage.
        for video in await settle_all(stack, during):
            assert video["receiver"]["resolved_by"] == "poll"

        stack.simulator.deliveries_stopped = False
        await settle_all(stack, await submit_all(stack, 10))
        await wait_until(lambda: state_is("arriving"), timeout=15, what="the recovery to be noticed")
        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert any("deliveries arriving again for model seedance-2.0" in m for m in infos)


async def test_health_route_needs_the_api_key(make_stack: StackFactory) -> None:
    async with make_stack(QUICK, api_keys=("k1",)) as stack:
        answer = await stack.client.get(f"{stack.url}/v1/health/deliveries")
        assert answer.status_code == 401
        answer = await stack.client.get(
            f"{stack.url}/v1/health/deliveries", headers={"authorization": "Bearer k1"}
        )
        assert answer.json() == {"object": "list", "data": [], "has_more": False}
