"""Work one request may cause, over real sockets: replay size, subscriptions, paused backlogs."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from tests.conftest import StackFactory, Subscriber, serve, wait_until
from tests.helpers import FAST, seed_events, subscribe

pytestmark = pytest.mark.anyio


async def sends_of(stack: Any, event_id: str) -> list[dict[str, Any]]:
    answer = await stack.client.get(f"{stack.url}/v1/events/{event_id}")
    assert answer.status_code == 200, answer.text
    sends: list[dict[str, Any]] = answer.json()["sends"]
    return sends


async def test_a_replay_past_its_cap_is_400_and_queues_nothing(
    make_stack: StackFactory, tmp_path: Any
) -> None:
    subscriber = Subscriber()
    async with serve(subscriber.app) as url, make_stack(replay_max_sends=6) as stack:
        seed_events(tmp_path / "receiver.db", 2)
        for _ in range(3):
            await subscribe(stack, f"{url}/hook")
        # Two events times three subscriptions: six sends, the cap itself.
        at_cap = await stack.client.post(f"{stack.url}/v1/events/replay", json={})
        assert at_cap.status_code == 200, at_cap.text
        assert (at_cap.json()["events"], at_cap.json()["sends"]) == (2, 6)
        await wait_until(lambda: len(subscriber.received) == 6, what="the six replayed sends")
        await subscribe(stack, f"{url}/hook")
        over = await stack.client.post(f"{stack.url}/v1/events/replay", json={})
        assert over.status_code == 400, over.text
        error = over.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "replay_too_large")
        assert "more than 6 sends" in error["message"] and "RECEIVER_REPLAY_MAX_SENDS (6)" in error["message"]
        for event_id in ("evt_00000001", "evt_00000002"):
            assert len(await sends_of(stack, event_id)) == 3  # the refused replay queued none
        # Narrowed, it fits.
        one = await stack.client.post(f"{stack.url}/v1/events/replay", json={"event_ids": ["evt_00000001"]})
        assert one.status_code == 200 and one.json()["sends"] == 4
        assert len(await sends_of(stack, "evt_00000001")) == 7


async def test_subscriptions_past_the_cap_are_400(make_stack: StackFactory) -> None:
    callback_secret = "whsec_" + "QUJD" * 8
    async with make_stack(FAST, max_subscriptions=2, callback_secret=callback_secret) as stack:
        first = await subscribe(stack, "http://127.0.0.1:9/a")
        await subscribe(stack, "http://127.0.0.1:9/b")
        await stack.client.post(f"{stack.url}/v1/subscriptions/{first['id']}/pause")  # still counts
        refused = await stack.client.post(
            f"{stack.url}/v1/subscriptions", json={"url": "http://127.0.0.1:9/c"}
        )
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "too_many_subscriptions")
        assert "RECEIVER_MAX_SUBSCRIPTIONS" in error["message"]
        listed = (await stack.client.get(f"{stack.url}/v1/subscriptions")).json()["data"]
        assert sorted(s["url"] for s in listed) == ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]
        # A task's own callback_url is not one of them.
        own = await stack.submit({"model": "m", "prompt": "p", "callback_url": "http://127.0.0.1:9/own"})
        assert own.status_code == 200, own.text
        assert (await stack.client.delete(f"{stack.url}/v1/subscriptions/{first['id']}")).status_code == 200
        await subscribe(stack, "http://127.0.0.1:9/c")


async def test_a_new_event_reaches_its_subscriber_past_a_paused_backlog(
    make_stack: StackFactory, tmp_path: Any
) -> None:
    held, active = Subscriber(), Subscriber()
    async with (
        serve(held.app) as held_url,
        serve(active.app) as active_url,
        make_stack(FAST) as stack,
    ):
        seed_events(tmp_path / "receiver.db", 5_000)
        paused = await subscribe(stack, f"{held_url}/hook")
        await stack.client.post(f"{stack.url}/v1/subscriptions/{paused['id']}/pause")
        replay = await stack.client.post(
            f"{stack.url}/v1/events/replay", json={"subscription_id": paused["id"]}
        )
        assert replay.json()["sends"] == 5_000
        await subscribe(stack, f"{active_url}/hook")
        video = (await stack.submit()).json()
        await wait_until(lambda: len(active.received) == 1, timeout=20, what="the new event's send")
        assert held.received == []
        with sqlite3.connect(tmp_path / "receiver.db") as conn:
            # The claims' index holds none of the paused backlog.
            ready = conn.execute(
                "SELECT count(*) FROM outbox INDEXED BY outbox_ready WHERE status = 'pending' AND held = 0"
                " AND subscription_pk = (SELECT pk FROM subscriptions WHERE id = ?)",
                (paused["id"],),
            ).fetchone()[0]
            assert ready == 0
        health = (await stack.client.get(f"{stack.url}/v1/health/subscribers")).json()["data"]
        by_id = {h["subscription_id"]: h for h in health}
        assert (
            by_id[paused["id"]]["pending"] >= 1
            and by_id[paused["id"]]["in_flight"] == 0
            and by_id[paused["id"]]["status"] == "paused"
        )
        assert video["id"]
        # Resumed, the backlog goes.
        await stack.client.post(f"{stack.url}/v1/subscriptions/{paused['id']}/resume")
        await wait_until(lambda: len(held.received) >= 1, timeout=20, what="the held sends")


async def test_subscriber_health_reads_a_bounded_window(make_stack: StackFactory, tmp_path: Any) -> None:
    async with make_stack() as stack:
        seed_events(tmp_path / "receiver.db", 150)
        sub = await subscribe(stack, "http://127.0.0.1:9/hook")
        await stack.client.post(f"{stack.url}/v1/subscriptions/{sub['id']}/pause")
        for _ in range(3):  # 450 held sends, 300 of them of the newest 100 events
            replay = await stack.client.post(
                f"{stack.url}/v1/events/replay", json={"subscription_id": sub["id"]}
            )
            assert replay.json()["sends"] == 150
        answer = await stack.client.get(f"{stack.url}/v1/health/subscribers")
        assert answer.status_code == 200, answer.text
        (health,) = answer.json()["data"]
        assert (health["window_events"], health["sends"], health["pending"], health["in_flight"]) == (
            100,
            100,
            100,
            0,
        )
        assert (health["status"], health["dead_letters"], health["dead_letters_more"]) == ("paused", 0, False)
