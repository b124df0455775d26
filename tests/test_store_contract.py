"""One contract, every backend: the same cases on SQLite and PostgreSQL, concurrency included.

Concurrency cases use two store instances on one database, as two processes would: each has
its own connections and its own writer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from typing import Any

import asyncpg
import pytest

from receiver.errors import OverLimit, UnknownCursor, UnknownToken, WrongVideo
from receiver.rules.records import (
    Attempt,
    CaptureOutcome,
    NewDelivery,
    OutboxStats,
    ReplayFilter,
    dedupe_base,
)
from tests.helpers import delivery, new_task, opened, submitted

pytestmark = pytest.mark.anyio


async def test_a_delivery_records_the_result_once(database_url: str) -> None:
    now = time.time()
    async with opened(database_url) as (store,):
        await store.create_subscription("https://example.com/hook", None, "whsec_x", now)
        await submitted(store, 1, now)
        first = await store.record_delivery(delivery(1, "msg:a", "completed", now))
        assert (first.outcome, first.duplicate, first.terminal, first.sends) == ("applied", False, True, 1)
        copy = await store.record_delivery(delivery(1, "msg:a", "completed", now + 1))
        assert copy.duplicate and copy.id == first.id
        later = await store.record_delivery(delivery(1, "msg:b", "failed", now + 2))
        assert (later.outcome, later.terminal) == ("anomaly", False)
        task = await store.task_by_video("vid1")
        assert task is not None
        assert (task.status, task.resolved_by, task.deliveries, task.duplicates, task.anomalies) == (
            "completed",
            "webhook",
            3,
            1,
            1,
        )
        assert task.next_poll_at is None
        events = await store.list_events("vid1", None, 10, None)
        assert len(events.rows) == 1 and events.rows[0].data["status"] == "completed"
        sends = await store.event_sends(events.rows[0].pk)
        assert [s.status for s in sends] == ["pending"]


async def test_unknown_token_and_wrong_video_change_nothing(database_url: str) -> None:
    now = time.time()
    async with opened(database_url) as (store,):
        await submitted(store, 1, now)
        with pytest.raises(UnknownToken):
            await store.record_delivery(delivery(9, "msg:x", "completed", now))
        with pytest.raises(WrongVideo):
            await store.record_delivery(delivery(1, "msg:y", "completed", now, video_id="vid2"))
        page = await store.list_deliveries(None, 10, None)
        assert page.rows == []
        with pytest.raises(UnknownCursor):
            await store.list_deliveries(None, 10, "dlv_999")


async def test_a_delivery_before_the_submit_answer_is_kept_and_merged(database_url: str) -> None:
    now = time.time()
    async with opened(database_url) as (store,):
        created = await store.create_task(new_task(1, now))
        assert created.pk is not None
        early = await store.record_delivery(delivery(1, "msg:early", "completed", now))
        assert early.terminal
        task = await store.finish_submit(
            created.pk, "vid1", "queued", {"id": "vid1", "prompt": "p1", "model": "m"}, now, now + 60
        )
        assert (task.status, task.video_id, task.video["prompt"]) == ("completed", "vid1", "p1")
        assert not await store.abandon_submit(created.pk)  # the provider called back: keep it


async def test_thin_deliveries_wait_for_our_get(database_url: str) -> None:
    now = time.time()
    async with opened(database_url) as (store,):
        pk = await submitted(store, 1, now)
        thin = await store.record_delivery(delivery(1, "msg:thin", None, now, needs_confirm=True))
        assert thin.outcome == "pending_confirm"
        due = await store.claim_due(now + 0.1, 10, 90)
        assert [t.pk for t in due] == [pk] and due[0].confirm_pending
        task = await store.record_poll(pk, "completed", {"id": "vid1", "status": "completed"}, now + 1, None)
        assert (task.status, task.resolved_by, task.polls) == ("completed", "webhook", 1)


async def test_polls_move_forward_only_and_fail_softly(database_url: str) -> None:
    now = time.time()
    async with opened(database_url) as (store,):
        pk = await submitted(store, 1, now)
        task = await store.record_poll(pk, None, None, now, now + 5, failed=True)
        assert (task.poll_failures, task.next_poll_at) == (1, now + 5)
        task = await store.record_poll(pk, "in_progress", {"id": "vid1"}, now + 5, now + 20)
        assert (task.status, task.poll_failures, task.last_open_poll_at) == ("in_progress", 0, now + 5)
        task = await store.record_poll(pk, "queued", {"id": "vid1"}, now + 6, now + 30)
        assert task.status == "in_progress"
        task = await store.record_poll(pk, "failed", {"id": "vid1", "error": {"code": "x"}}, now + 9, None)
        assert (task.status, task.resolved_by, task.next_poll_at, task.polls) == ("failed", "poll", None, 4)
        history = await store.model_history("m", 10)
        assert len(history) == 1 and history[0].completion == pytest.approx((now + 6 + now + 9) / 2 - now)


async def test_copies_of_one_delivery_at_two_processes_apply_once(database_url: str) -> None:
    now = time.time()
    async with opened(database_url, 2) as (a, b):
        for n in range(20):
            await submitted(a, n, now)
        copies = [
            store.record_delivery(delivery(n, f"msg:{n}", "completed", now))
            for n in range(20)
            for store in (a, b, a, b)
        ]
        results = await asyncio.gather(*copies)
        applied = [r for r in results if not r.duplicate]
        assert len(applied) == 20 and all(r.outcome == "applied" and r.terminal for r in applied)
        assert sum(r.duplicate for r in results) == 60
        events = await a.list_events(None, None, 100, None)
        assert sorted(e.video_id for e in events.rows) == sorted(f"vid{n}" for n in range(20))
        task = await b.task_by_video("vid3")
        assert task is not None and (task.deliveries, task.duplicates) == (4, 3)


@pytest.mark.parametrize(
    ("fields", "key", "legacy"),
    [
        ({"token_hash": "ab" * 32}, "t:" + "ab" * 16 + " msg:M", None),
        ({"route": "workspace", "token_hash": None, "key_id": "f00d"}, "k:f00d msg:M", "w:4:vid1 msg:M"),
        ({"route": "workspace", "token_hash": None, "video_id": None}, "k:- msg:M", "w:0: msg:M"),
        ({"dedupe_key": "msg:a b:c"}, "t:tok1 msg:a b:c", None),
        ({"route": "workspace", "token_hash": None, "video_id": "v 1:x"}, "k:- msg:M", "w:5:v 1:x msg:M"),
    ],
)
def test_kept_keys_are_scoped_and_read_back_as_sent(
    fields: dict[str, Any], key: str, legacy: str | None
) -> None:
    d = delivery(1, "msg:M", None, 0.0, **fields)
    assert (d.key, d.legacy_key) == (key, legacy)
    assert {dedupe_base(k) for k in (key, legacy or key)} == {d.dedupe_key}
    assert dedupe_base("msg:kept-before-scoping") == "msg:kept-before-scoping"


async def test_the_same_webhook_id_on_two_tasks_is_two_deliveries(database_url: str) -> None:
    """Dedupe is scoped to the task on per-task URLs: task 2's own result under a webhook-id
    task 1 already used is applied, not taken for a repeat of task 1's delivery."""
    now = time.time()
    async with opened(database_url) as (store,):
        for n in (1, 2, 3, 4):
            await submitted(store, n, now)
        x = await store.record_delivery(delivery(1, "msg:M", "completed", now))
        y = await store.record_delivery(delivery(2, "msg:M", "failed", now + 1))
        assert (y.duplicate, y.outcome, y.terminal) == (False, "applied", True) and y.id != x.id
        again = await store.record_delivery(delivery(2, "msg:M", "failed", now + 2))
        assert again.duplicate and again.id == y.id
        # The same in one batch: queued together, neither is a repeat of the other.
        both = await asyncio.gather(
            store.record_delivery(delivery(3, "msg:N", "completed", now)),
            store.record_delivery(delivery(4, "msg:N", "completed", now)),
        )
        assert [(r.duplicate, r.terminal) for r in both] == [(False, True), (False, True)]
        for n, status in ((1, "completed"), (2, "failed"), (3, "completed"), (4, "completed")):
            task = await store.task_by_video(f"vid{n}")
            assert task is not None and task.status == status, n
        task = await store.task_by_video("vid2")
        assert task is not None and (task.deliveries, task.duplicates) == (2, 1)


async def test_on_the_workspace_url_a_repeat_is_one_verified_by_the_same_secret(database_url: str) -> None:
    now = time.time()
    async with opened(database_url) as (store,):
        await submitted(store, 1, now)

        def signed(key_id: str, at: float) -> NewDelivery:
            return delivery(1, "msg:W", "in_progress", at, route="workspace", token_hash=None, key_id=key_id)

        first = await store.record_delivery(signed("secret-a", now))
        other = await store.record_delivery(signed("secret-b", now + 1))
        assert not first.duplicate and not other.duplicate and other.id != first.id
        same = await store.record_delivery(signed("secret-a", now + 2))
        assert same.duplicate and same.id == first.id
        # A per-task delivery is scoped to its task, not to a secret: another delivery again.
        task_url = await store.record_delivery(delivery(1, "msg:W", "in_progress", now + 3))
        assert not task_url.duplicate
        task = await store.task_by_video("vid1")
        assert task is not None and (task.deliveries, task.duplicates) == (4, 1)


async def test_one_idempotency_key_at_two_processes_makes_one_task(database_url: str) -> None:
    now = time.time()
    async with opened(database_url, 2) as (a, b):
        same = {"idem_scope": "key1", "idem_key": "k", "request_hash": "h"}
        results = await asyncio.gather(
            *(store.create_task(new_task(n, now, **same)) for n, store in enumerate((a, b, a, b)))
        )
        assert sorted(r.state for r in results) == ["created", "in_flight", "in_flight", "in_flight"]
        other = await b.create_task(new_task(9, now, **{**same, "request_hash": "other"}))
        assert other.state == "mismatch"
        # The first submit's process died: its outcome is unknown (the provider may have the
        # task), so the key stays held, unconfirmed, until its confirm window ends.
        unknown = await a.create_task(new_task(10, now + 600, **same))
        assert unknown.state == "unconfirmed"
        late = await a.create_task(new_task(11, now + 3601, **same))
        assert late.state == "created"


async def test_poll_claims_never_overlap_and_leases_expire(database_url: str) -> None:
    now = time.time()
    async with opened(database_url, 2) as (a, b):
        for n in range(40):
            await submitted(a, n, now - 100)
        claims = await asyncio.gather(*(s.claim_due(now, 7, 90) for s in (a, b, a, b, a, b, a, b)))
        taken = [t.pk for claim in claims for t in claim]
        assert len(taken) == len(set(taken)) == 40
        assert await a.claim_due(now, 100, 90) == []  # leased: out of the due range
        again = await b.claim_due(now + 91, 100, 90)  # a claimer that died: taken over
        assert len(again) == 40


async def test_send_claims_hold_the_per_subscriber_cap_across_processes(database_url: str) -> None:
    now = time.time()
    async with opened(database_url, 2) as (a, b):
        sub = await a.create_subscription("https://example.com/hook", None, "whsec_x", now)
        for n in range(12):
            await submitted(a, n, now)
            await a.record_delivery(delivery(n, f"msg:{n}", "completed", now))
        claims = await asyncio.gather(*(s.claim_outbox(now + 1, 10, {}, 3, 60) for s in (a, b, a, b)))
        taken = [job.pk for claim in claims for job in claim]
        assert len(taken) == len(set(taken)) == 3  # the cap holds for the fleet
        await a.record_attempt(Attempt(taken[0], now + 2, 200, 5.0, None, "delivered"))
        more = await b.claim_outbox(now + 2, 10, {}, 3, 60)
        assert len(more) == 1 and more[0].subscription.id == sub.id
        # A claimer that died: its leases run out and the sends are taken over.
        rescued = await a.claim_outbox(now + 200, 20, {}, 20, 60)
        assert len(rescued) == 11 - 0  # every send not delivered


async def test_send_claims_hold_each_subscribers_own_cap(database_url: str) -> None:
    now = time.time()
    async with opened(database_url, 2) as (a, b):
        slow = await a.create_subscription("https://slow.example.com/hook", None, "whsec_x", now)
        fast = await a.create_subscription("https://fast.example.com/hook", None, "whsec_x", now)
        for n in range(12):
            await submitted(a, n, now)
            await a.record_delivery(delivery(n, f"msg:{n}", "completed", now))
        caps = {slow.pk: 1, fast.pk: 5}
        later = now + 1
        claims = await asyncio.gather(*(s.claim_outbox(later, 10, caps, 3, 60) for s in (a, b, a, b)))
        by_subscriber: dict[str, int] = {}
        for job in (job for claim in claims for job in claim):
            by_subscriber[job.subscription.id] = by_subscriber.get(job.subscription.id, 0) + 1
        assert by_subscriber == {slow.id: 1, fast.id: 5}
        # Not in `caps`: the default holds.
        assert len(await b.claim_outbox(later + 61, 20, {slow.pk: 1}, 3, 60)) == 1 + 3


async def test_advance_polls_pulls_lazy_polls_in_never_back(database_url: str) -> None:
    async with opened(database_url) as (store,):
        now = 10_000.0
        plans = {"lazy": (9_990.0, 11_000.0), "young": (9_999.0, 11_000.0), "due": (9_980.0, 9_999.5)}
        pks = {}
        for n, (name, (created, next_poll)) in enumerate(plans.items()):
            made = await store.create_task(new_task(n, created))
            assert made.pk is not None
            pks[name] = made.pk
            await store.finish_submit(made.pk, f"vid{n}", "queued", {}, created, next_poll)
        other = await store.create_task(new_task(9, 9_990.0, model="other"))
        assert other.pk is not None
        await store.finish_submit(other.pk, "vid9", "queued", {}, 9_990.0, 11_000.0)
        assert await store.open_tasks("m", 10) == [9_999.0, 9_990.0, 9_980.0]
        assert await store.open_tasks("m", 1) == [9_999.0]

        assert await store.advance_polls("m", 3.0, now) == 2
        polls = {}
        for name, pk in pks.items():
            task = await store.task_by_pk(pk)
            assert task is not None
            polls[name] = task.next_poll_at
        # Past its eager first poll: now; younger: at its eager first poll; already due: kept.
        assert polls == {"lazy": 10_000.0, "young": 10_002.0, "due": 9_999.5}
        untouched = await store.task_by_pk(other.pk)
        assert untouched is not None and untouched.next_poll_at == 11_000.0


async def test_replay_queues_sends_again_under_the_same_event_id(database_url: str) -> None:
    now = time.time()
    async with opened(database_url) as (store,):
        sub = await store.create_subscription("https://example.com/hook", ["video.completed"], "whsec_x", now)
        await submitted(store, 1, now)
        await store.record_delivery(delivery(1, "msg:1", "completed", now))
        selected, queued = await store.queue_replay(ReplayFilter(subscription_id=sub.id), now, "rpl_1")
        assert (selected, queued) == (1, 1)
        assert await store.replay_progress("rpl_1") == {"pending": 1}
        none = await store.queue_replay(ReplayFilter(video_id="nope"), now, "rpl_2")
        assert none == (0, 0)
        paused = await store.set_subscription_status(sub.id, "paused", now)
        assert paused is not None and paused.status == "paused"
        assert await store.claim_outbox(now + 1, 10, {}, 4, 60) == []


async def test_an_event_goes_to_the_subscriptions_its_type_matches(database_url: str) -> None:
    # One rule, three paths: the ack path's batch, the one-task path (a poll), and a replay.
    now = time.time()
    async with opened(database_url) as (store,):
        every = await store.create_subscription("https://all.example.com/hook", None, "whsec_x", now)
        failed = await store.create_subscription(
            "https://failed.example.com/hook", ["video.failed"], "whsec_x", now
        )
        await submitted(store, 1, now)
        polled = await submitted(store, 2, now)
        completed = await store.record_delivery(delivery(1, "msg:1", "completed", now))
        assert completed.sends == 1
        await store.record_poll(polled, "failed", {"id": "vid2", "status": "failed"}, now, None)
        jobs = await store.claim_outbox(now + 1, 10, {}, 10, 60)
        sent = sorted((j.event.data["status"], j.subscription.id == every.id) for j in jobs)
        assert sent == [("completed", True), ("failed", False), ("failed", True)]
        assert {j.subscription.id for j in jobs} == {every.id, failed.id}
        assert await store.queue_replay(ReplayFilter(video_id="vid1"), now, "rpl_1") == (1, 1)


async def test_the_event_stream_follows_commit_order(database_url: str) -> None:
    now = time.time()
    async with opened(database_url, 2) as (a, b):
        for n in range(10):
            await submitted(a, n, now)
        await asyncio.gather(
            *(
                s.record_delivery(delivery(n, f"msg:{n}", "completed", now))
                for n, s in zip(range(10), [a, b] * 5, strict=True)
            )
        )
        seen: list[str] = []
        cursor = None
        while True:
            rows = await b.events_after(cursor, 3)
            if not rows:
                break
            seen += [r.video_id for r in rows]
            cursor = rows[-1].id
        assert sorted(seen) == sorted(f"vid{n}" for n in range(10)) and len(seen) == 10
        newest = await a.list_events(None, None, 4, None)
        older = await a.list_events(None, None, 10, newest.rows[-1].id)
        assert len(newest.rows) + len(older.rows) == 10 and newest.has_more and not older.has_more
        assert not {e.id for e in newest.rows} & {e.id for e in older.rows}


async def test_a_completed_result_queues_its_files_claimed_like_polls(database_url: str) -> None:
    now = time.time()
    content = {"video_url": "https://cdn.example/v.mp4", "last_frame_url": "https://cdn.example/f.png"}
    async with opened(database_url, 2) as (a, b):
        pks = [await submitted(a, n, now - 100) for n in range(6)]
        for n in range(6):
            video = {"id": f"vid{n}", "status": "completed", "content": content}
            await a.record_delivery(delivery(n, f"msg:{n}", "completed", now - 50, video=video))
        # A repeated terminal result queues nothing twice.
        await a.record_delivery(
            delivery(
                0,
                "msg:again",
                "completed",
                now - 40,
                video={"id": "vid0", "status": "completed", "content": content},
            )
        )
        assert await a.capture_stats() == {"pending": 12}
        claims = await asyncio.gather(*(s.claim_captures(now, 5, 15) for s in (a, b, a, b)))
        taken = [c.pk for claim in claims for c in claim]
        assert len(taken) == len(set(taken)) == 12
        assert await b.claim_captures(now, 100, 15) == []  # leased: out of the due range
        assert await a.next_capture_due() == pytest.approx(now + 15)
        rows = {c.pk: c for claim in claims for c in claim}
        first = min(rows)
        await b.renew_capture(first, now + 100)
        again = await a.claim_captures(now + 16, 100, 15)  # a claimer that died: taken over
        assert first not in {c.pk for c in again} and len(again) == 11
        kept = rows[first]
        await a.finish_capture(
            CaptureOutcome(kept.pk, "kept", now, size=3, sha256="ab", content_type="video/mp4", key="k")
        )
        retry = again[0]
        await b.finish_capture(
            CaptureOutcome(retry.pk, "pending", now, error="boom", next_attempt_at=now + 500)
        )
        failed = again[1]
        await b.finish_capture(CaptureOutcome(failed.pk, "failed", now, error="too large"))
        await b.finish_capture(CaptureOutcome(failed.pk, "kept", now))  # settled rows stay settled
        assert await a.capture_stats() == {"pending": 10, "kept": 1, "failed": 1}
        files = await b.captures_of(pks)
        assert sum(len(v) for v in files.values()) == 12
        by_pk = {c.pk: c for v in files.values() for c in v}
        assert (by_pk[first].status, by_pk[first].size, by_pk[first].key, by_pk[first].attempts) == (
            "kept",
            3,
            "k",
            1,
        )
        assert {c.variant for c in files[pks[0]]} == {"video", "last_frame"}
        assert (by_pk[retry.pk].status, by_pk[retry.pk].error) == ("pending", "boom")
        assert by_pk[retry.pk].next_attempt_at == pytest.approx(now + 500)
        assert (by_pk[failed.pk].status, by_pk[failed.pk].error) == ("failed", "too large")


async def test_a_long_transaction_in_another_database_does_not_hold_lists_back(
    postgres_url: str, postgres_server: str
) -> None:
    """Lists show rows once every transaction that could still sort before them has ended: the
    ones in this database. One open elsewhere on the server (a report, a dump) must not stall
    them; one open here must."""
    now = time.time()
    elsewhere = await asyncpg.connect(postgres_server)
    here = await asyncpg.connect(postgres_url)
    try:
        async with opened(postgres_url) as (store,), elsewhere.transaction():
            await elsewhere.fetchval("SELECT pg_current_xact_id()")  # it holds an id now
            await submitted(store, 1, now)
            assert [t.video_id for t in (await store.list_tasks(None, 10, None)).rows] == ["vid1"]
            async with here.transaction():
                await here.fetchval("SELECT pg_current_xact_id()")
                await submitted(store, 2, now)
                held = await store.list_tasks(None, 10, None)
                assert [t.video_id for t in held.rows] == ["vid1"]
            shown = await store.list_tasks(None, 10, None)
            assert [t.video_id for t in shown.rows] == ["vid2", "vid1"]
    finally:
        await elsewhere.close()
        await here.close()


async def test_the_task_list_follows_the_order_tasks_got_their_video_ids(database_url: str) -> None:
    now = time.time()
    async with opened(database_url) as (store,):
        older = await store.create_task(new_task(1, now))
        await submitted(store, 2, now)
        assert older.pk is not None
        first = await store.list_tasks(None, 10, None)
        assert [t.video_id for t in first.rows] == ["vid2"]
        # The older task's submit answer comes last: it joins the list at the top, where a client
        # that reads from the top until the first row it has seen (vid2) will find it.
        await store.finish_submit(older.pk, "vid1", "queued", {"id": "vid1"}, now, now + 60)
        page = await store.list_tasks(None, 1, None)
        assert [t.video_id for t in page.rows] == ["vid1"] and page.has_more
        rest = await store.list_tasks(None, 10, "vid1")
        assert [t.video_id for t in rest.rows] == ["vid2"] and not rest.has_more
        # A task given its video id by a delivery (before the submit answer) joins the same way.
        early = await store.create_task(new_task(3, now))
        assert early.pk is not None
        await store.record_delivery(delivery(3, "msg:early", "in_progress", now, video_id="vid3"))
        newest = await store.list_tasks(None, 10, None)
        assert [t.video_id for t in newest.rows] == ["vid3", "vid1", "vid2"]


async def test_the_subscription_cap_counts_what_clients_made_and_have_not_deleted(database_url: str) -> None:
    now = time.time()
    async with opened(database_url) as (store,):
        first = await store.create_subscription("https://a.example.com/hook", None, "whsec_x", now, limit=2)
        await store.create_subscription("https://b.example.com/hook", None, "whsec_x", now, limit=2)
        await store.set_subscription_status(first.id, "paused", now)  # paused still counts
        with pytest.raises(OverLimit) as refused:
            await store.create_subscription("https://c.example.com/hook", None, "whsec_x", now, limit=2)
        assert (refused.value.count, refused.value.limit) == (2, 2)
        listed = await store.list_subscriptions(10, None)
        assert sorted(s.url for s in listed.rows) == [
            "https://a.example.com/hook",
            "https://b.example.com/hook",
        ]
        # A task's own callback_url is no subscription a client made: it does not count.
        await store.create_task(new_task(1, now, callback_url="https://own.example.com/hook"))
        await store.set_subscription_status(first.id, "deleted", now)
        third = await store.create_subscription("https://c.example.com/hook", None, "whsec_x", now, limit=2)
        assert third.url == "https://c.example.com/hook"


async def test_subscription_creates_at_two_processes_stop_at_the_cap(database_url: str) -> None:
    now = time.time()
    async with opened(database_url, 2) as (a, b):
        made = await asyncio.gather(
            *(
                s.create_subscription(f"https://{n}.example.com/hook", None, "whsec_x", now, limit=5)
                for n, s in zip(range(12), [a, b] * 6, strict=True)
            ),
            return_exceptions=True,
        )
        assert sum(not isinstance(m, BaseException) for m in made) == 5
        assert all(isinstance(m, OverLimit) for m in made if isinstance(m, BaseException))
        assert len((await a.list_subscriptions(100, None)).rows) == 5


async def test_a_replay_over_its_cap_writes_nothing_and_one_at_its_cap_is_queued(database_url: str) -> None:
    now = time.time()
    async with opened(database_url) as (store,):
        subs = [
            await store.create_subscription(f"https://{n}.example.com/hook", None, "whsec_x", now)
            for n in range(3)
        ]
        await store.set_subscription_status(
            subs[2].id, "paused", now
        )  # paused: its sends are held, not skipped
        for n in range(2):
            await submitted(store, n, now)
            await store.record_delivery(delivery(n, f"msg:{n}", "completed", now))
        before = await store.outbox_stats()
        assert before.by_status == {"pending": 6}
        # Two events times three subscriptions: six sends, one past a cap of five.
        with pytest.raises(OverLimit) as refused:
            await store.queue_replay(ReplayFilter(), now, "rpl_over", max_sends=5)
        assert (refused.value.count, refused.value.limit) == (6, 5)
        assert await store.replay_progress("rpl_over") == {}
        assert await store.outbox_stats() == before
        assert await store.queue_replay(ReplayFilter(), now, "rpl_at", max_sends=6) == (2, 6)
        assert await store.replay_progress("rpl_at") == {"pending": 6}
        # Counted with the same rule as the writes: one subscription's share fits a smaller cap.
        narrow = ReplayFilter(subscription_id=subs[0].id)
        assert await store.queue_replay(narrow, now, "rpl_one", max_sends=2) == (2, 2)


async def test_claims_and_wakeups_pass_over_a_paused_subscribers_backlog(database_url: str) -> None:
    now = time.time()
    async with opened(database_url) as (store,):
        paused = [
            await store.create_subscription(f"https://p{n}.example.com/hook", None, "whsec_x", now)
            for n in range(30)
        ]
        for sub in paused:
            await store.set_subscription_status(sub.id, "paused", now)
        for n in range(100):  # 3,000 held sends, due long before the active subscriber's one
            await submitted(store, n, now - 100)
            await store.record_delivery(delivery(n, f"msg:{n}", "completed", now - 100))
        active = await store.create_subscription("https://active.example.com/hook", None, "whsec_x", now)
        await submitted(store, 100, now)
        await store.record_delivery(delivery(100, "msg:100", "completed", now))
        assert await store.outbox_stats() == OutboxStats({"pending": 3_031})
        assert await store.next_outbox_due() == pytest.approx(now)
        jobs = await store.claim_outbox(now + 1, 10, {}, 10, 60)
        assert [(j.subscription.id, j.event.video_id) for j in jobs] == [(active.id, "vid100")]
        # Resumed, a backlog is due again; paused once more, it is held again.
        await store.set_subscription_status(paused[0].id, "active", now)
        assert await store.next_outbox_due() == pytest.approx(now - 100)
        await store.set_subscription_status(paused[0].id, "paused", now)
        assert await store.claim_outbox(now + 2, 100, {}, 100, 60) == []
        assert await store.next_outbox_due() == pytest.approx(now + 61)  # the active one's lease
        await store.set_subscription_status(paused[1].id, "active", now)
        resumed = await store.claim_outbox(now + 2, 200, {}, 200, 60)
        assert {j.subscription.id for j in resumed} == {paused[1].id} and len(resumed) == 101


async def test_the_claims_scan_reads_no_held_send(database_url: str) -> None:
    """The claim's scan goes through an index that holds no paused subscriber's send: with 3,000
    of them due first, it reads the one due send of the active subscriber and nothing else."""
    now = time.time()
    async with opened(database_url) as (store,):
        held = await store.create_subscription("https://held.example.com/hook", None, "whsec_x", now)
        await store.set_subscription_status(held.id, "paused", now)
        for n in range(30):
            await submitted(store, n, now - 100)
            await store.record_delivery(delivery(n, f"msg:{n}", "completed", now - 100))
        for n in range(99):
            await store.queue_replay(ReplayFilter(subscription_id=held.id), now - 100, f"rpl_{n}")
        await store.create_subscription("https://active.example.com/hook", None, "whsec_x", now)
        await submitted(store, 30, now)
        await store.record_delivery(delivery(30, "msg:30", "completed", now))
        assert await store.outbox_stats() == OutboxStats({"pending": 3_002})
    if database_url.startswith("sqlite"):
        from store.sqlite.fanout import DUE_SENDS as SQLITE_DUE

        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            query, args = SQLITE_DUE.format(full=""), (now + 1, 40)
            plan = " ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {query}", args))
            assert "USING INDEX outbox_ready" in plan, plan
            steps = 0

            def step() -> int:
                nonlocal steps
                steps += 1
                return 0

            conn.set_progress_handler(step, 100)
            assert len(conn.execute(query, args).fetchall()) == 1
            # Each row visited costs some ten virtual-machine steps: 3,000 would be ~300 calls.
            assert steps < 30, steps
        finally:
            conn.close()
    else:
        import asyncpg

        from store.postgres.fanout import DUE_SENDS as POSTGRES_DUE

        conn = await asyncpg.connect(database_url)
        try:
            plan = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {POSTGRES_DUE}", now + 1, [], 40)
            # A fresh database, statistics not yet gathered: the plan must hold anyway.
            nodes = [json.loads(plan)[0]["Plan"]]
            indexes, read = set(), []
            while nodes:
                node = nodes.pop()
                nodes += node.get("Plans", [])
                if node.get("Index Name", "").startswith("outbox"):
                    indexes.add(node["Index Name"])
                if node.get("Relation Name") == "outbox":
                    read.append(
                        (node["Node Type"], node["Actual Rows"], node.get("Rows Removed by Filter", 0))
                    )
            assert indexes == {"outbox_ready"}, plan
            assert len(read) == 1 and read[0][0] != "Seq Scan" and read[0][1:] == (1, 0), plan
        finally:
            await conn.close()


async def test_subscriber_health_reads_are_bounded_per_subscriber(database_url: str) -> None:
    now = time.time()
    async with opened(database_url) as (store,):
        busy = await store.create_subscription("https://busy.example.com/hook", None, "whsec_x", now)
        quiet = await store.create_subscription(
            "https://quiet.example.com/hook", ["video.failed"], "whsec_x", now
        )
        for n in range(6):
            await submitted(store, n, now)
            await store.record_delivery(delivery(n, f"msg:{n}", "completed", now))
        for n in range(3):  # every event replayed to the busy one: 24 sends in all
            await store.queue_replay(ReplayFilter(subscription_id=busy.id), now, f"rpl_{n}")
        events = await store.list_events(None, None, 4, None)  # the newest four
        first = min(e.pk for e in events.rows)
        recent = await store.recent_sends([busy.pk, quiet.pk], first, 10)
        assert recent[quiet.pk] == []
        sends = recent[busy.pk]
        assert len(sends) == 10  # of the 16 sends of those four events
        assert {s.event_id for s in sends} <= {e.id for e in events.rows}
        newest = events.rows[0].id
        assert [s.event_id for s in sends[:4]] == [newest] * 4  # newest events first, replays too
        jobs = await store.claim_outbox(now + 1, 100, {}, 100, 60)
        for job in jobs:
            await store.record_attempt(Attempt(job.pk, now + 2, 500, 1.0, "answered 500", "dead"))
        again = await store.recent_sends([busy.pk], first, 10)
        assert all(s.status == "dead" and len(s.log) == 1 for s in again[busy.pk])
        assert await store.dead_letter_counts([busy.pk, quiet.pk], 5) == {busy.pk: 6, quiet.pk: 0}
        assert await store.dead_letter_counts([busy.pk], 100) == {busy.pk: 24}


async def recount(url: str) -> tuple[dict[tuple[str, str | None], int], dict[str, int], dict[str, int], Any]:
    """What /metrics and /v1/stats once counted at every scrape: a GROUP BY over every row."""
    tasks = "SELECT status, resolved_by, count(*) AS n FROM tasks GROUP BY status, resolved_by"
    outbox = "SELECT status, count(*) AS n FROM outbox GROUP BY status"
    captures = "SELECT status, count(*) AS n FROM captures GROUP BY status"
    oldest = "SELECT min(created_at) FROM tasks WHERE status IN ('submitting', 'queued', 'in_progress')"
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            found = [conn.execute(sql).fetchall() for sql in (tasks, outbox, captures, oldest)]
    else:
        conn = await asyncpg.connect(url)
        try:
            found = [[tuple(r) for r in await conn.fetch(sql)] for sql in (tasks, outbox, captures, oldest)]
        finally:
            await conn.close()
    return (
        {(r[0], r[1]): r[2] for r in found[0]},
        {r[0]: r[1] for r in found[1]},
        {r[0]: r[1] for r in found[2]},
        found[3][0][0],
    )


async def test_kept_counts_equal_a_full_recount_after_a_mixed_workload(database_url: str) -> None:
    now = time.time()
    content = {"video_url": "https://cdn.example/v.mp4"}
    async with opened(database_url, 2) as (a, b):
        await a.create_subscription("https://example.com/hook", None, "whsec_x", now)
        await b.create_subscription("https://example.com/other", ["video.failed"], "whsec_y", now)
        pks = await asyncio.gather(*(submitted((a, b)[n % 2], n, now - 100 + n) for n in range(24)))
        # Deliveries from two processes at once: results, repeats, anomalies, a task at a time.
        await asyncio.gather(
            *(
                (a, b)[n % 2].record_delivery(
                    delivery(
                        n,
                        f"msg:{n}",
                        status,
                        now - 50,
                        video={"id": f"vid{n}", "status": status, "content": content},
                    )
                )
                for n, status in [(n, ("completed", "failed", "in_progress")[n % 3]) for n in range(12)]
            )
        )
        await a.record_delivery(delivery(0, "msg:0", "completed", now - 49))  # a copy
        await b.record_delivery(delivery(1, "msg:late", "completed", now - 48))  # an anomaly
        # Polls: one moves on, one ends the task, one fails.
        await a.record_poll(pks[12], "in_progress", {"id": "vid12", "status": "in_progress"}, now - 40, now)
        await b.record_poll(
            pks[13],
            "completed",
            {"id": "vid13", "status": "completed", "content": content},
            now - 40,
            None,
            resolved_by="poll",
        )
        await a.record_poll(pks[14], None, None, now - 40, None, resolved_by="poll_failed", failed=True)
        # Submits whose outcome is unknown; one abandoned; one left mid-submit and swept.
        unknown = await a.create_task(new_task(100, now - 30))
        assert unknown.pk is not None
        await a.unconfirm_submit(unknown.pk, now - 30)
        gone = await b.create_task(new_task(101, now - 30))
        assert gone.pk is not None and await b.abandon_submit(gone.pk)
        await a.create_task(new_task(102, now - 9000))
        await a.create_task(new_task(103, now - 9000))
        assert await b.sweep_submits(now - 5000, now - 10000, 10) == (2, 0)
        assert await b.sweep_submits(now - 5000, now - 8000, 1) == (0, 1)  # past the window: deleted
        # Sends delivered, failed, dead and retried; captures kept, failed and retried.
        jobs = await a.claim_outbox(now + 1, 100, {}, 100, 60)
        outcomes = ("delivered", "failed", "dead", "retry")
        await asyncio.gather(
            *(
                (a, b)[i % 2].record_attempt(
                    Attempt(job.pk, now + 2, 500, 5.0, None, outcomes[i % 4], next_attempt_at=now + 90)
                )
                for i, job in enumerate(jobs)
            )
        )
        files = await b.claim_captures(now, 100, 15)
        assert files
        for i, file in enumerate(files):
            status = ("kept", "failed", "pending")[i % 3]
            await (a, b)[i % 2].finish_capture(
                CaptureOutcome(file.pk, status, now, next_attempt_at=now + 500)
            )
        tasks, sends, captures, oldest = await recount(database_url)
        assert ("unconfirmed", None) in tasks and ("completed", "poll") in tasks and len(sends) >= 3
        # Read before and after the appended changes are folded (PostgreSQL), from either process.
        for store in (a, b, a):
            stats = await store.task_stats()
            assert stats.by_state == tasks
            assert stats.oldest_open_created_at == pytest.approx(oldest)
            assert await store.outbox_stats() == OutboxStats(sends)
            assert await store.capture_stats() == captures
            await store.fold_counts()
