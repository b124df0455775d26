"""Never miss a result: 200 tasks against a faulty provider, with and without a SIGKILL mid-run."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.rules.records import dedupe_base
from receiver.rules.tasks import RANK
from receiver.simulator.provider import SimConfig, Simulator
from tests.conftest import SECRET, StackFactory, serve, wait_until
from tests.helpers import child_receiver

pytestmark = pytest.mark.anyio

TASKS = 200
FAULTS = SimConfig(
    secret=SECRET,
    duration_median=0.6,
    duration_sigma=0.4,
    fail_rate=0.2,
    drop_rate=0.3,
    duplicate_rate=0.2,
    reorder_rate=0.1,
    get_error_rate=0.1,
    get_throttle_rate=0.05,
    retry_after=1,
    seed=11,
)
POLLING = {"poll_after": 1, "poll_max_interval": 2, "poll_rate": 1000.0, "poll_concurrency": 32}


class Watcher:
    """Samples every task's status while the run goes on and remembers any backwards move."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.url = ""
        self.seen: dict[str, str] = {}
        self.backwards: list[tuple[str, str, str]] = []

    async def sample(self) -> None:
        after = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if after:
                params["after"] = after
            try:
                page = (await self.client.get(f"{self.url}/v1/videos", params=params)).json()
            except httpx.HTTPError:
                return  # the receiver is down (SIGKILL): nothing to sample
            for video in page["data"]:
                before = self.seen.get(video["id"])
                if before is not None and RANK[video["status"]] < RANK[before]:
                    self.backwards.append((video["id"], before, video["status"]))
                if before is None or RANK[video["status"]] >= RANK[before]:
                    self.seen[video["id"]] = video["status"]
            if not page["has_more"]:
                return
            after = page["data"][-1]["id"]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sample()


def check_outcome(simulator: Simulator, db: str, watcher: Watcher) -> None:
    with sqlite3.connect(db) as conn:
        tasks = dict(conn.execute("SELECT video_id, status FROM tasks").fetchall())
        events = dict(conn.execute("SELECT video_id, count(*) FROM events GROUP BY video_id").fetchall())
        resolved = dict(
            conn.execute("SELECT resolved_by, count(*) FROM tasks GROUP BY resolved_by").fetchall()
        )
        stored = {dedupe_base(key) for (key,) in conn.execute("SELECT dedupe_key FROM deliveries")}
    missing = {m for m in simulator.acknowledged if f"msg:{m}" not in stored}
    assert simulator.acknowledged and not missing, f"acknowledged deliveries not in the store: {missing}"
    assert len(simulator.tasks) == TASKS and len(tasks) == TASKS
    wrong = {
        vid: (tasks.get(vid), t.final) for vid, t in simulator.tasks.items() if tasks.get(vid) != t.final
    }
    assert not wrong, f"tasks not at the provider's true final state: {wrong}"
    assert events == dict.fromkeys(tasks, 1), "each terminal result must be recorded exactly once"
    assert not watcher.backwards
    # Both roads were taken: the faults really dropped deliveries and polling recovered them.
    assert resolved.get("webhook", 0) > 0 and resolved.get("poll", 0) > 0


async def submit_all(client: httpx.AsyncClient, url: str) -> list[str]:
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> str:
        async with gate:
            body = {"model": "seedance-2.0", "prompt": f"scene {i}"}
            response = await client.post(f"{url}/v1/videos", json=body, headers={"Idempotency-Key": f"t{i}"})
            assert response.status_code == 200, response.text
            return str(response.json()["id"])

    return await asyncio.gather(*(one(i) for i in range(TASKS)))


async def all_terminal(client: httpx.AsyncClient, url: str) -> bool:
    for status in ("queued", "in_progress"):
        try:
            page = (await client.get(f"{url}/v1/videos", params={"status": status, "limit": 1})).json()
        except httpx.HTTPError:
            return False
        if page["data"]:
            return False
    return True


@pytest.mark.slow
async def test_two_hundred_tasks_against_a_faulty_provider(make_stack: StackFactory, tmp_path: Path) -> None:
    async with make_stack(FAULTS, **POLLING) as stack:
        watcher = Watcher(stack.client)
        watcher.url = stack.url
        stop = asyncio.Event()
        watching = asyncio.create_task(watcher.run(stop))
        await submit_all(stack.client, stack.url)
        await wait_until(lambda: all_terminal(stack.client, stack.url), timeout=90, what="every task to end")
        stop.set()
        await watching
        await watcher.sample()
        check_outcome(stack.simulator, str(tmp_path / "receiver.db"), watcher)


@pytest.mark.slow
async def test_sigkill_mid_run_loses_nothing(tmp_path: Path) -> None:
    simulator = Simulator(FAULTS)
    async with (
        serve(simulator.app) as provider_url,
        child_receiver(tmp_path, provider_url) as receiver,
        httpx.AsyncClient(timeout=10) as client,
    ):
        await receiver.start(client)
        watcher = Watcher(client)
        watcher.url = receiver.url
        stop = asyncio.Event()
        watching = asyncio.create_task(watcher.run(stop))
        await submit_all(client, receiver.url)

        # Kill once some results are in and many are still on their way.
        async def some_done() -> bool:
            page = (await client.get(f"{receiver.url}/v1/videos", params={"status": "completed"})).json()
            return len(page["data"]) >= 10

        await wait_until(some_done, timeout=30, what="the first results")
        receiver.kill()
        open_at_kill = sum(1 for t in simulator.tasks.values() if t.status_at(simulator.clock()) != t.final)
        assert open_at_kill > 0  # the kill really landed mid-run
        await receiver.start(client)
        await wait_until(lambda: all_terminal(client, receiver.url), timeout=120, what="every task to end")
        stop.set()
        await watching
        await watcher.sample()
        check_outcome(simulator, str(tmp_path / "receiver.db"), watcher)
