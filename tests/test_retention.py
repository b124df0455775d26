"""Retention on every backend: what a pass deletes and keeps, one pruner at a time, acks never
waiting on a pass; over HTTP the pruned marks, 410 for expired files, stats and metrics."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from receiver.media import LocalMedia
from receiver.pruner import Pruner
from receiver.settings import Settings
from store import Attempt, CaptureOutcome, Store
from tests.test_store_contract import delivery, opened, submitted

pytestmark = pytest.mark.anyio

DAY = 86_400.0
T = 1_900_000_000.0  # "now" of the pruner's clock in these cases


def pruner(store: Store, media_root: Path, now: float = T, batch: int = 3, **settings: Any) -> Pruner:
    chosen = dataclasses.replace(Settings(), **settings)
    return Pruner(store, chosen, LocalMedia(media_root), clock=lambda: now, batch=batch)


async def a_finished_task(store: Store, n: int, ended: float, *, copies: int = 1) -> str:
    """A task that completed at `ended` by delivery `msg:n` (plus copies of it); its video id."""
    await submitted(store, n, ended - 100)
    for copy in range(copies):
        await store.record_delivery(delivery(n, f"msg:{n}", "completed", ended + copy))
    return f"vid{n}"


async def deliveries_of(store: Store, video_id: str) -> list[Any]:
    return list((await store.list_deliveries(video_id, 100, None)).rows)


async def test_a_pass_deletes_exactly_what_is_past_each_retention(database_url: str, tmp_path: Path) -> None:
    async with opened(database_url) as (store,):
        await store.create_subscription("https://example.com/hook", None, "whsec_x", T - 60 * DAY)
        old = await a_finished_task(store, 1, T - 40 * DAY, copies=2)
        young = await a_finished_task(store, 2, T - 10 * DAY)
        await submitted(store, 3, T - 40 * DAY)  # open: never pruned, however old
        # A send of the old task's event, attempted once (an attempt row), then dead (a dead letter).
        claimed = await store.claim_outbox(T - 40 * DAY + 5, 10, {}, 10, 60)
        assert [job.event.video_id for job in claimed] == [old]  # the young one's send is not due yet
        for job in claimed:
            await store.record_attempt(Attempt(job.pk, T - 40 * DAY + 6, 500, 1.0, "boom", "dead"))
        before = {v: await store.task_by_video(v) for v in (old, young)}

        counts = await pruner(store, tmp_path).prune()

        # Old task: its event, sends and attempts gone, its two delivery rows emptied (one row
        # holds both copies: repeats). The young task and the open one are untouched.
        assert counts == {"attempts": 1, "delivery_bodies": 1, "events": 1, "outbox": 1}
        assert [e.video_id for e in (await store.list_events(None, None, 10, None)).rows] == [young]
        (pruned,) = await deliveries_of(store, old)
        assert (pruned.pruned, pruned.body, pruned.headers, pruned.repeats) == (True, b"", {}, 1)
        (kept,) = await deliveries_of(store, young)
        assert (kept.pruned, kept.body) == (False, b"{}")
        for video_id, task in before.items():
            after = await store.task_by_video(video_id)
            assert task is not None and after is not None
            counters = ("status", "deliveries", "duplicates", "polls", "anomalies")
            assert [getattr(after, c) for c in counters] == [getattr(task, c) for c in counters]
        assert await store.task_by_video("vid3") is not None

        # A copy of a pruned delivery is still a duplicate of it, and counts as one.
        copy = await store.record_delivery(delivery(1, "msg:1", "completed", T))
        assert copy.duplicate and copy.id == pruned.id
        task = await store.task_by_video(old)
        assert task is not None and (task.deliveries, task.duplicates) == (3, 2)
        assert len((await store.list_events(None, None, 10, None)).rows) == 1  # no second event

        assert await pruner(store, tmp_path).prune() == {}  # nothing is pruned twice


async def test_deliveries_naming_no_task_are_pruned_by_when_they_came(
    database_url: str, tmp_path: Path
) -> None:
    async with opened(database_url) as (store,):
        for n, at in ((1, T - 40 * DAY), (2, T - 10 * DAY)):
            await store.record_delivery(
                delivery(n, f"msg:{n}", "completed", at, route="workspace", token_hash=None, key_id="k1")
            )
        assert await pruner(store, tmp_path).prune() == {"delivery_bodies": 1}
        shown = {d.video_id: d.pruned for d in (await store.list_deliveries(None, 10, None)).rows}
        assert shown == {"vid1": True, "vid2": False}
        copy = await store.record_delivery(
            delivery(1, "msg:1", "completed", T, route="workspace", token_hash=None, key_id="k1")
        )
        assert copy.duplicate
        counts = await pruner(store, tmp_path, now=T + 400 * DAY).prune()
        assert counts is not None and counts["deliveries"] == 2
        assert (await store.list_deliveries(None, 10, None)).rows == []


async def test_task_retention_deletes_tasks_and_their_keys(database_url: str, tmp_path: Path) -> None:
    async with opened(database_url) as (store,):
        await store.create_subscription("https://example.com/hook", None, "whsec_x", T - 500 * DAY)
        old = await a_finished_task(store, 1, T - 400 * DAY, copies=2)
        young = await a_finished_task(store, 2, T - 200 * DAY)

        counts = await pruner(store, tmp_path).prune()

        assert counts is not None and (counts["tasks"], counts["deliveries"]) == (1, 1)
        assert await store.task_by_video(old) is None
        assert await deliveries_of(store, old) == []
        task = await store.task_by_video(young)
        assert task is not None and task.deliveries == 1
        (kept,) = await deliveries_of(store, young)
        assert kept.pruned  # past RECEIVER_RETENTION, not RECEIVER_TASK_RETENTION: row and key stay

        kept_forever = await pruner(store, tmp_path, now=T + 1000 * DAY, task_retention=0).prune()
        assert kept_forever is not None and "tasks" not in kept_forever
        assert await store.task_by_video(young) is not None


async def test_kept_files_expire_and_their_rows_stay(database_url: str, tmp_path: Path) -> None:
    media = tmp_path / "media"
    async with opened(database_url) as (store,):
        content = {"video_url": "https://cdn.example/v.mp4"}
        for n, kept_at in ((1, T - 40 * DAY), (2, T - 10 * DAY)):
            await submitted(store, n, kept_at - 100)
            video = {"id": f"vid{n}", "status": "completed", "content": content}
            await store.record_delivery(delivery(n, f"msg:{n}", "completed", kept_at - 50, video=video))
        claimed = await store.claim_captures(T, 10, 15)
        for row in claimed:
            kept_at = T - 40 * DAY if row.video_id == "vid1" else T - 10 * DAY
            (media / row.video_id).mkdir(parents=True)
            (media / row.video_id / "video").write_bytes(b"mp4")
            await store.finish_capture(
                CaptureOutcome(
                    row.pk, "kept", kept_at, size=3, content_type="video/mp4", key=f"{row.video_id}/video"
                )
            )

        counts = await pruner(store, media).prune()

        assert counts is not None and counts["files"] == 1
        assert not (media / "vid1" / "video").exists() and (media / "vid2" / "video").exists()
        files = await store.captures_of([c.task_pk for c in claimed])
        status = {rows[0].video_id: (rows[0].status, rows[0].key) for rows in files.values()}
        assert status == {"vid1": ("expired", None), "vid2": ("kept", "vid2/video")}

        kept_forever = await pruner(store, media, now=T + 100 * DAY, media_retention=0).prune()
        assert kept_forever is not None and "files" not in kept_forever
        assert (media / "vid2" / "video").exists()


async def test_one_pruner_at_a_time_across_processes(database_url: str, tmp_path: Path) -> None:
    async with opened(database_url, 2) as (a, b):
        await a_finished_task(a, 1, T - 40 * DAY)
        first = pruner(a, tmp_path)
        second = pruner(b, tmp_path)
        # A pass in progress elsewhere holds the lease: this process does not prune.
        assert await a.take_lease("prune", "elsewhere", T, T + 60)
        assert await second.prune() is None
        assert await first.prune() is None
        (untouched,) = await deliveries_of(a, "vid1")
        assert not untouched.pruned
        # Its holder died: once its lease ran out, one process takes over.
        later = pruner(b, tmp_path, now=T + 61)
        assert await later.prune() == {"delivery_bodies": 1, "events": 1}
        # Two processes starting a pass at once: one prunes, the other finds the lease taken or
        # nothing left, and no row is deleted twice.
        await a_finished_task(a, 2, T - 40 * DAY)
        results = await asyncio.gather(
            pruner(a, tmp_path, now=T + 62).prune(), pruner(b, tmp_path, now=T + 62).prune()
        )
        assert [r for r in results if r] == [{"delivery_bodies": 1, "events": 1}]  # None or {}: the other
        last = await b.last_prune()
        assert last.at == T + 62 and last.counts in ({"delivery_bodies": 1, "events": 1}, {})


async def test_no_ack_waits_on_a_pruning_pass(database_url: str, tmp_path: Path) -> None:
    """A large backlog pruned in small batches while new deliveries are acknowledged: every
    acknowledgement completes while the pass is still running (order of events, no clocks)."""
    backlog, fresh = 300, 5
    async with opened(database_url) as (store,):
        for start in range(0, backlog, 50):
            await asyncio.gather(*(a_finished_task(store, n, T - 40 * DAY) for n in range(start, start + 50)))
        for n in range(backlog, backlog + fresh):
            await submitted(store, n, T)
        slow = pruner(store, tmp_path, batch=5)
        running = asyncio.create_task(slow.prune())
        await asyncio.sleep(0)  # wait-ok: one turn so the pass has begun before the first ack
        seen: list[tuple[int, bool]] = []
        for n in range(backlog, backlog + fresh):
            result = await store.record_delivery(delivery(n, f"msg:{n}", "completed", T))
            assert not result.duplicate
            seen.append((slow.batches, running.done()))
        counts = await running
        assert counts is not None and counts["events"] == backlog
        assert slow.batches >= backlog // 5
        # Each acknowledgement came back while the pass was still going, with batches still to run.
        assert all(not done and batches < slow.batches for batches, done in seen), seen
