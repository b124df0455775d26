"""Downstream fan-out over real sockets: signed sends, retries, isolation, dead letters, replay, SSE."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from receiver.simulator.provider import SimConfig, Simulator
from tests.conftest import SECRET, StackFactory, Subscriber, serve, wait_until
from tests.helpers import FAST, child_receiver, seed_events, subscribe

pytestmark = pytest.mark.anyio

TASKS = 12
FANOUT = {"fanout_retry_schedule": (0.3, 0.3, 0.3), "fanout_timeout": 2}


async def subscription_pk(stack: Any, subscription: dict[str, Any]) -> int:
    with sqlite3.connect(stack.settings.database_url.removeprefix("sqlite:///")) as conn:
        row = conn.execute("SELECT pk FROM subscriptions WHERE id = ?", (subscription["id"],)).fetchone()
    return int(row[0])


async def events_of(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
        page = (await client.get(f"{url}/v1/events", params=params)).json()
        found += page["data"]
        if not page["has_more"]:
            return found
        after = page["data"][-1]["id"]


@pytest.mark.slow
async def test_three_subscribers_healthy_flaky_and_dead(make_stack: StackFactory) -> None:
    healthy, flaky = Subscriber(), Subscriber(answer=lambda n: 500 if n < 3 else 200)
    dead = Subscriber(hang=30)
    async with (
        serve(healthy.app) as healthy_url,
        serve(flaky.app) as flaky_url,
        serve(dead.app) as dead_url,
        make_stack(FAST, **{**FANOUT, "fanout_timeout": 1.5}) as stack,
    ):
        subs = {
            "healthy": await subscribe(stack, f"{healthy_url}/hook"),
            "flaky": await subscribe(stack, f"{flaky_url}/hook", events=["video.completed"]),
            "dead": await subscribe(stack, f"{dead_url}/hook"),
        }
        assert all(s["secret"].startswith("whsec_") for s in subs.values())
        ids = [(await stack.submit({"model": "m", "prompt": str(i)})).json()["id"] for i in range(TASKS)]
        for video_id in ids:
            await stack.wait_status(video_id, "completed", timeout=20) if stack.simulator.tasks[
                video_id
            ].final == "completed" else await stack.wait_status(video_id, "failed", timeout=20)
        events = await events_of(stack.client, stack.url)
        assert len(events) == TASKS  # one event per terminal result
        every = {e["id"] for e in events}
        completed = {e["id"] for e in events if e["type"] == "video.completed"}
        assert 0 < len(completed) < TASKS

        await wait_until(lambda: healthy.ids == every, timeout=20, what="the healthy subscriber")
        await wait_until(lambda: flaky.ids == completed, timeout=20, what="the flaky subscriber")

        # Signatures verify with the official library, under each subscriber's own secret.
        for subscriber, name in ((healthy, "healthy"), (flaky, "flaky")):
            verifier = Webhook(subs[name]["secret"])
            for received in subscriber.received:
                assert verifier.verify(received.body, received.headers)["id"] == received.webhook_id

        # The flaky one saw its three 500s retried under the same webhook-id; none went dead.
        # (Every id arrives before the retries do: wait for those, then count exactly.)
        await wait_until(
            lambda: len(flaky.received) >= len(completed) + 3, timeout=20, what="the flaky one's retries"
        )
        assert len(flaky.received) == len(completed) + 3

        # The dead one: every send dead-lettered after the schedule (1 try + 3 retries).
        async def all_dead() -> bool:
            page = (await stack.client.get(f"{stack.url}/v1/dead-letters", params={"limit": 100})).json()
            return len(page["data"]) == TASKS

        # Its window shrank to one send in flight at its first timeout: 48 tries of 1.5 s in a row.
        await wait_until(all_dead, timeout=150, what="the dead subscriber's sends to be dead-lettered")
        assert dead.ids == every
        assert len(dead.received) == TASKS * 4
        # One in flight at a time since its first timeout; the healthy one's window was never cut.
        windows = stack.app.state.dispatcher.congestion
        assert windows.window(await subscription_pk(stack, subs["dead"])).size == 1
        assert windows.window(await subscription_pk(stack, subs["healthy"])).size >= 4
        detail = (await stack.client.get(f"{stack.url}/v1/events/{events[0]['id']}")).json()
        by_sub = {s["subscription_id"]: s for s in detail["sends"]}
        assert by_sub[subs["dead"]["id"]]["status"] == "dead"
        assert len(by_sub[subs["dead"]["id"]]["attempt_log"]) == 4
        assert by_sub[subs["healthy"]["id"]]["attempt_log"][0]["status"] == 200
        metrics = (await stack.client.get(f"{stack.url}/metrics")).text
        assert f"receiver_dead_letters {TASKS}.0" in metrics
        dead.release.set()


async def test_a_subscriber_that_never_answers_holds_up_no_other(make_stack: StackFactory) -> None:
    """Every send to one subscriber hangs, and its timeout is further off than the test waits:
    the other subscriber still gets every event while those sends are still out. (A dispatcher
    whose places the hanging sends could fill would deliver nothing more until they time out.)"""
    healthy, hung = Subscriber(), Subscriber(hang=120)
    async with (
        serve(healthy.app) as healthy_url,
        serve(hung.app) as hung_url,
        make_stack(FAST, **{**FANOUT, "fanout_timeout": 120}) as stack,
    ):
        try:
            hung_sub = await subscribe(stack, f"{hung_url}/hook")
            await subscribe(stack, f"{healthy_url}/hook")
            for i in range(TASKS):
                assert (await stack.submit({"model": "m", "prompt": str(i)})).status_code == 200
            await wait_until(lambda: len(healthy.ids) == TASKS, timeout=30, what="every event, healthy")
            assert hung.received, "the hanging subscriber was never sent anything"
            # ...and not one of its sends has ended: the healthy one's came while they hung.
            for event in await events_of(stack.client, stack.url):
                detail = (await stack.client.get(f"{stack.url}/v1/events/{event['id']}")).json()
                (send,) = [s for s in detail["sends"] if s["subscription_id"] == hung_sub["id"]]
                assert send["attempt_log"] == [], send
        finally:
            hung.release.set()


async def test_task_callback_url_gets_its_own_result(make_stack: StackFactory) -> None:
    mine = Subscriber()
    secret = "whsec_" + "QUJD" * 8
    async with serve(mine.app) as url, make_stack(FAST, callback_secret=secret) as stack:
        video = (await stack.submit({"model": "m", "prompt": "p", "callback_url": f"{url}/hook"})).json()
        other = (await stack.submit({"model": "m", "prompt": "q"})).json()
        await wait_until(lambda: len(mine.received) == 1, timeout=20, what="the task's own callback")
        await stack.wait_status(other["id"], "completed", timeout=20) if stack.simulator.tasks[
            other["id"]
        ].final == "completed" else None
        body = Webhook(secret).verify(mine.received[0].body, mine.received[0].headers)
        assert body["data"]["id"] == video["id"]
        assert len(mine.received) == 1  # the other task's result is not this task's business


@pytest.mark.parametrize(
    ("status", "final", "tries"), [(410, "failed", 1), (400, "failed", 1), (302, "dead", 4), (503, "dead", 4)]
)
async def test_answer_classes(make_stack: StackFactory, status: int, final: str, tries: int) -> None:
    subscriber = Subscriber(answer=lambda n: status)
    async with serve(subscriber.app) as url, make_stack(FAST, **FANOUT) as stack:
        sub = await subscribe(stack, f"{url}/hook")
        video = (await stack.submit()).json()

        async def settled() -> bool:
            events = await events_of(stack.client, stack.url)
            if not events:
                return False
            detail = (await stack.client.get(f"{stack.url}/v1/events/{events[0]['id']}")).json()
            return bool(detail["sends"] and detail["sends"][0]["status"] == final)

        await wait_until(settled, timeout=20, what=f"the send to end {final}")
        assert len(subscriber.received) == tries
        state = (await stack.client.get(f"{stack.url}/v1/subscriptions/{sub['id']}")).json()
        assert state["status"] == ("disabled" if status == 410 else "active")
        assert video["id"]


async def test_pause_holds_and_resume_sends(make_stack: StackFactory) -> None:
    subscriber = Subscriber()
    async with serve(subscriber.app) as url, make_stack(FAST) as stack:
        sub = await subscribe(stack, f"{url}/hook")
        paused = await stack.client.post(f"{stack.url}/v1/subscriptions/{sub['id']}/pause")
        assert paused.json()["status"] == "paused"
        video = (await stack.submit()).json()
        final = stack.simulator.tasks[video["id"]].final
        await stack.wait_status(video["id"], final)
        await stack.app.state.dispatcher.run_until_idle()
        assert subscriber.received == []
        await stack.client.post(f"{stack.url}/v1/subscriptions/{sub['id']}/resume")
        await wait_until(lambda: len(subscriber.received) == 1, what="the held event")
        deleted = await stack.client.delete(f"{stack.url}/v1/subscriptions/{sub['id']}")
        assert deleted.json()["deleted"] is True
        assert (await stack.client.get(f"{stack.url}/v1/subscriptions/{sub['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "url"),
        ({"url": "http://example.com/hook"}, "url"),
        ({"url": "https://10.0.0.7/hook"}, "url"),
        ({"url": "https://[::1]/hook"}, "url"),
        ({"url": "https://169.254.169.254/latest"}, "url"),
        ({"url": "https://user:pw@example.com/"}, "url"),
        ({"url": "https://example.com/", "events": ["video.progress"]}, "events"),
        ({"url": "https://example.com/", "events": []}, "events"),
        ({"url": "https://example.com/", "secret": "hunter2"}, "secret"),
        ({"url": "https://example.com/", "colour": "red"}, "colour"),
    ],
)
async def test_bad_subscriptions_are_400(make_stack: StackFactory, body: dict[str, Any], param: str) -> None:
    async with make_stack(outbound_allow=()) as stack:
        answer = await stack.client.post(f"{stack.url}/v1/subscriptions", json=body)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param
        assert (await stack.client.get(f"{stack.url}/v1/subscriptions")).json()["data"] == []


async def test_send_time_check_blocks_private_addresses(make_stack: StackFactory) -> None:
    subscriber = Subscriber()
    async with serve(subscriber.app) as url, make_stack(FAST, outbound_allow=(), **FANOUT) as stack:
        # A name that passed the check when subscribed but resolves to loopback when sent (rebinding).
        port = url.rsplit(":", 1)[1]
        await stack.store.create_subscription(f"https://localhost:{port}/hook", None, SECRET, time.time())
        video = (await stack.submit()).json()
        await stack.wait_status(video["id"], stack.simulator.tasks[video["id"]].final)

        async def blocked() -> bool:
            events = await events_of(stack.client, stack.url)
            detail = (await stack.client.get(f"{stack.url}/v1/events/{events[0]['id']}")).json()
            return bool(detail["sends"][0]["last_error"])

        await wait_until(blocked, what="the first attempt")
        events = await events_of(stack.client, stack.url)
        detail = (await stack.client.get(f"{stack.url}/v1/events/{events[0]['id']}")).json()
        assert "private" in detail["sends"][0]["last_error"]
        assert subscriber.received == []


async def test_replay_resends_under_the_same_ids(make_stack: StackFactory) -> None:
    first, second = Subscriber(), Subscriber()
    async with serve(first.app) as url1, serve(second.app) as url2, make_stack(FAST) as stack:
        sub1 = await subscribe(stack, f"{url1}/hook")
        video = (await stack.submit()).json()
        await wait_until(lambda: len(first.received) == 1, what="the first send")
        sub2 = await subscribe(stack, f"{url2}/hook")  # joined later: replay brings it up to date
        replay = await stack.client.post(
            f"{stack.url}/v1/events/replay", json={"video_id": video["id"], "subscription_id": sub2["id"]}
        )
        assert replay.json()["events"] == 1 and replay.json()["sends"] == 1
        await wait_until(lambda: len(second.received) == 1, what="the replayed send")
        assert second.ids == first.ids
        everyone = await stack.client.post(f"{stack.url}/v1/events/replay", json={})
        assert everyone.json()["sends"] == 2
        await wait_until(lambda: len(first.received) == 2 and len(second.received) == 2, what="replay to all")
        assert first.ids == second.ids and len(first.ids) == 1

        async def recorded() -> bool:
            # The subscriber has the sends; their attempts are recorded a moment after.
            status = (await stack.client.get(f"{stack.url}/v1/replays/{everyone.json()['id']}")).json()
            return bool(status["done"])

        await wait_until(recorded, what="the replay's attempts to be recorded")
        status = (await stack.client.get(f"{stack.url}/v1/replays/{everyone.json()['id']}")).json()
        assert status["by_status"] == {"delivered": 2} and status["retrying"] == 0
        assert sub1["id"] != sub2["id"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"event_ids": []}, "event_ids"),
        ({"event_ids": "evt_1"}, "event_ids"),
        ({"since": "yesterday"}, "since"),
        ({"until": True}, "until"),
        ({"subscription_id": "sub_missing"}, "subscription_id"),
        ({"video_id": 5}, "video_id"),
        ({"colour": 1}, "colour"),
    ],
)
async def test_bad_replays_are_400(make_stack: StackFactory, body: dict[str, Any], param: str) -> None:
    async with make_stack() as stack:
        answer = await stack.client.post(f"{stack.url}/v1/events/replay", json=body)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param


async def test_replaying_an_inbound_delivery_makes_no_second_event(make_stack: StackFactory) -> None:
    subscriber = Subscriber()
    async with serve(subscriber.app) as url, make_stack(FAST) as stack:
        await subscribe(stack, f"{url}/hook")
        video = (await stack.submit()).json()
        await wait_until(lambda: len(subscriber.received) == 1, what="the send")
        delivery = (await stack.client.get(f"{stack.url}/v1/deliveries")).json()["data"][0]
        for _ in range(2):
            await stack.client.post(f"{stack.url}/v1/deliveries/{delivery['id']}/replay")
        await stack.app.state.dispatcher.run_until_idle()
        assert len(await events_of(stack.client, stack.url)) == 1
        assert len(subscriber.received) == 1
        assert video["id"]


async def test_event_stream_with_resume(make_stack: StackFactory) -> None:
    async with make_stack(FAST) as stack:
        frames: list[dict[str, str]] = []

        async def read(headers: dict[str, str], want: int) -> None:
            async with stack.client.stream("GET", f"{stack.url}/v1/events/stream", headers=headers) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                frame: dict[str, str] = {}
                async for line in r.aiter_lines():
                    if line.startswith(("id:", "event:", "data:")):
                        key, _, value = line.partition(":")
                        frame[key] = value.strip()
                    elif line == "" and frame:
                        frames.append(frame)
                        frame = {}
                        if len(frames) >= want:
                            return

        reader = asyncio.create_task(read({}, 2))
        await wait_until(lambda: True)
        ids = [(await stack.submit()).json()["id"] for _ in range(2)]
        await asyncio.wait_for(reader, timeout=20)
        assert {json.loads(f["data"])["data"]["id"] for f in frames} == set(ids)
        first_id = frames[0]["id"]
        frames.clear()
        await asyncio.wait_for(read({"last-event-id": first_id}, 1), timeout=20)
        assert json.loads(frames[0]["data"])["id"] != first_id
        bad = await stack.client.get(f"{stack.url}/v1/events/stream", headers={"last-event-id": "evt_nope"})
        assert bad.status_code == 400


@pytest.mark.slow
async def test_replaying_ten_thousand_events(make_stack: StackFactory, tmp_path: Path) -> None:
    subscriber = Subscriber()
    async with serve(subscriber.app) as url, make_stack(FAST, fanout_per_subscriber=32) as stack:
        seed_events(tmp_path / "receiver.db", 10_000)
        sub = await subscribe(stack, f"{url}/hook")
        started = time.monotonic()
        replay = (
            await stack.client.post(f"{stack.url}/v1/events/replay", json={"subscription_id": sub["id"]})
        ).json()
        assert replay["sends"] == 10_000

        async def done() -> bool:
            status = (await stack.client.get(f"{stack.url}/v1/replays/{replay['id']}")).json()
            return bool(status["done"])

        await wait_until(done, timeout=300, what="10,000 replayed sends")
        elapsed = time.monotonic() - started
        assert len(subscriber.ids) == 10_000
        print(f"\nreplayed 10,000 events in {elapsed:.1f} s: {10_000 / elapsed:.0f} events/s")


@pytest.mark.slow
async def test_sigkill_during_dispatch_loses_nothing(tmp_path: Path) -> None:
    subscriber = Subscriber()
    simulator = Simulator(SimConfig(secret=SECRET, duration_median=0.3, duration_sigma=0.2))
    async with (
        serve(subscriber.app) as sub_url,
        serve(simulator.app) as provider_url,
        child_receiver(tmp_path, provider_url) as receiver,
        httpx.AsyncClient(timeout=10) as client,
    ):
        receiver.env.update(
            RECEIVER_OUTBOUND_ALLOW="127.0.0.0/8", RECEIVER_FANOUT_RETRY_SCHEDULE="0.5,1,1,1,1"
        )
        await receiver.start(client)
        await client.post(f"{receiver.url}/v1/subscriptions", json={"url": f"{sub_url}/hook"})
        for i in range(60):
            assert (
                await client.post(f"{receiver.url}/v1/videos", json={"model": "m", "prompt": str(i)})
            ).status_code == 200
        await wait_until(lambda: len(subscriber.ids) >= 5, timeout=30, what="the first sends")
        receiver.kill()
        assert len(subscriber.ids) < 60  # killed mid-dispatch
        await receiver.start(client)

        async def all_sent() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                events = await events_of(client, receiver.url)
                return len(events) == 60 and subscriber.ids == {e["id"] for e in events}
            return False

        await wait_until(all_sent, timeout=90, what="every event to reach the subscriber")


async def test_replay_command(make_stack: StackFactory, tmp_path: Path) -> None:
    subscriber = Subscriber()
    async with serve(subscriber.app) as url, make_stack(FAST) as stack:
        sub = await subscribe(stack, f"{url}/hook")
        ids = [(await stack.submit()).json()["id"] for _ in range(3)]
        await wait_until(lambda: len(subscriber.received) == 3, what="the first sends")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            "replay",
            "--url",
            stack.url,
            "events",
            "--subscription",
            sub["id"],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, err
        assert "3 events, 3 sends queued" in out.decode() and "3 delivered" in out.decode()
        assert len(subscriber.received) == 6 and len(subscriber.ids) == 3
        delivery = (await stack.client.get(f"{stack.url}/v1/deliveries")).json()["data"][0]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            "replay",
            "--url",
            stack.url,
            "delivery",
            delivery["id"],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0 and b"duplicate" in out, err
        assert len(ids) == 3


async def test_replay_cli_shows_failures_and_stops_when_nothing_could_be_sent(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    async with make_stack(FAST, fanout_retry_schedule=(0.2, 60, 60)) as stack:
        seed_events(tmp_path / "receiver.db", 4)
        sub = await subscribe(stack, "http://127.0.0.1:9/hook")  # nothing listens there
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            "replay",
            "--url",
            stack.url,
            "events",
            "--subscription",
            sub["id"],
            "--timeout",
            "120",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(child.communicate(), timeout=60)
        assert child.returncode == 2, (out, err)
        assert b"4 sends queued" in out
        assert b"failing: " in err  # shown as it happened
        assert b"nothing could be sent (4 sends failing" in err
        replay_id = out.split(b":", 1)[0].decode()
        progress = (await stack.client.get(f"{stack.url}/v1/replays/{replay_id}")).json()
        assert (progress["retrying"], progress["done"]) == (4, False)
        assert progress["last_error"] and progress["last_error"].encode() in err
