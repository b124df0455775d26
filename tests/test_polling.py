"""Polling over real sockets: deadlines, a provider that forgets, throttling, metrics."""

from __future__ import annotations

import time

import pytest

from receiver.simulator.provider import SimConfig
from tests.conftest import SECRET, StackFactory

pytestmark = pytest.mark.anyio


class ShiftedClock:
    """Real time plus an offset the test moves forward (the receiver's clock only)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


SLOW = SimConfig(secret=SECRET, duration_median=3600, duration_sigma=0.0)


async def test_task_past_its_deadline_ends_expired(make_stack: StackFactory) -> None:
    clock = ShiftedClock()
    async with make_stack(SLOW, clock=clock, poll_after=5) as stack:
        video = (await stack.submit({"model": "m", "prompt": "p", "execution_expires_after": 30})).json()
        clock.offset = 10  # first poll due, deadline not reached
        await stack.poller.run_until_idle()
        polled = await stack.video(video["id"])
        assert (polled["status"], polled["receiver"]["polls"]) == ("queued", 1)
        clock.offset = 30 + 60 + 1  # past execution_expires_after plus the grace
        await stack.poller.run_until_idle()
        done = await stack.video(video["id"])
        assert done["status"] == "failed" and done["error"]["code"] == "expired"
        assert done["receiver"]["resolved_by"] == "deadline"
        assert done["receiver"]["next_poll_at"] is None


async def test_task_max_age_ends_expired(make_stack: StackFactory) -> None:
    clock = ShiftedClock()
    async with make_stack(SLOW, clock=clock, poll_after=5, task_max_age=600) as stack:
        video = (await stack.submit()).json()
        clock.offset = 601
        await stack.poller.run_until_idle()
        done = await stack.video(video["id"])
        assert (done["status"], done["receiver"]["resolved_by"]) == ("failed", "deadline")


async def test_a_404_is_confirmed_before_the_task_fails(make_stack: StackFactory) -> None:
    clock = ShiftedClock()
    async with make_stack(SLOW, clock=clock, poll_after=5) as stack:
        video = (await stack.submit()).json()
        del stack.simulator.tasks[video["id"]]  # the provider forgets the video
        statuses = []
        for step in range(1, 4):
            clock.offset = step * 3600
            await stack.poller.run_until_idle()
            statuses.append((await stack.video(video["id"]))["status"])
        assert statuses == ["queued", "queued", "failed"]
        done = await stack.video(video["id"])
        assert done["error"]["code"] == "not_found" and done["receiver"]["polls"] == 3


async def test_retry_after_is_honoured(make_stack: StackFactory) -> None:
    clock = ShiftedClock()
    sim = SimConfig(secret=SECRET, duration_median=3600, get_throttle_rate=1.0, retry_after=900)
    async with make_stack(sim, clock=clock, poll_after=5) as stack:
        video = (await stack.submit()).json()
        clock.offset = 10
        await stack.poller.run_until_idle()
        after = await stack.video(video["id"])
        assert after["receiver"]["next_poll_at"] >= time.time() + clock.offset + 899


async def test_delivery_first_cancels_polling(make_stack: StackFactory) -> None:
    async with make_stack() as stack:
        video = (await stack.submit()).json()
        assert video["receiver"]["next_poll_at"] is not None
        done = await stack.wait_status(video["id"], "completed")
        assert done["receiver"]["next_poll_at"] is None and done["receiver"]["polls"] == 0


async def test_metrics(make_stack: StackFactory) -> None:
    async with make_stack() as stack:
        video = (await stack.submit()).json()
        await stack.wait_status(video["id"], "completed")
        text = (await stack.client.get(f"{stack.url}/metrics")).text
        assert 'receiver_tasks{resolved_by="webhook",status="completed"} 1.0' in text
        assert 'receiver_deliveries_total{outcome="applied"} 1.0' in text
        assert "receiver_oldest_open_task_age_seconds 0.0" in text
        bad = await stack.client.post(f"{stack.url}/webhooks", content=b"{}")
        assert bad.status_code == 401
        text = (await stack.client.get(f"{stack.url}/metrics")).text
        assert 'receiver_deliveries_total{outcome="rejected_missing_signature"} 1.0' in text
