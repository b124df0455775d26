"""Retention on every backend: what a pass deletes and keeps, one pruner at a time, acks never
waiting on a pass; over HTTP the pruned marks, 410 for expired files, stats and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sqlite3
import sys
import time
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import pytest

from receiver.media.directory import LocalMedia
from receiver.rules.records import Attempt, CaptureOutcome
from receiver.settings import Settings
from receiver.simulator.provider import SimConfig
from receiver.workers.pruner import Pruner
from store import Store
from tests.conftest import SECRET, StackFactory, sign_headers, wait_until
from tests.helpers import DAY, a_finished_task, delivery, opened, submitted

pytestmark = pytest.mark.anyio

T = 1_900_000_000.0  # "now" of the pruner's clock in these cases


def pruner(store: Store, media_root: Path, now: float = T, batch: int = 3, **settings: Any) -> Pruner:
    chosen = dataclasses.replace(Settings(), **settings)
    return Pruner(store, chosen, LocalMedia(media_root), clock=lambda: now, batch=batch)


async def deliveries_of(store: Store, video_id: str | None, count: int = 1) -> list[Any]:
    """The deliveries listed, once `count` show (PostgreSQL lists read behind a visibility
    horizon, so a row just written may show a moment later)."""
    found: list[Any] = []

    async def shown() -> bool:
        found[:] = (await store.list_deliveries(video_id, 100, None)).rows
        return len(found) == count

    await wait_until(shown, timeout=10, what=f"{count} deliveries to be listed")
    return found


async def events_of(store: Store, count: int) -> list[str]:
    found: list[str] = []

    async def shown() -> bool:
        found[:] = [e.video_id for e in (await store.list_events(None, None, 100, None)).rows]
        return len(found) == count

    await wait_until(shown, timeout=10, what=f"{count} events to be listed")
    return found


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
        assert await events_of(store, 1) == [young]
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
        assert await events_of(store, 1) == [young]  # no second event

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
        shown = {d.video_id: d.pruned for d in await deliveries_of(store, None, 2)}
        assert shown == {"vid1": True, "vid2": False}
        copy = await store.record_delivery(
            delivery(1, "msg:1", "completed", T, route="workspace", token_hash=None, key_id="k1")
        )
        assert copy.duplicate
        counts = await pruner(store, tmp_path, now=T + 400 * DAY).prune()
        assert counts is not None and counts["deliveries"] == 2
        assert await deliveries_of(store, None, 0) == []


async def test_task_retention_deletes_tasks_and_their_keys(database_url: str, tmp_path: Path) -> None:
    async with opened(database_url) as (store,):
        await store.create_subscription("https://example.com/hook", None, "whsec_x", T - 500 * DAY)
        old = await a_finished_task(store, 1, T - 400 * DAY, copies=2)
        young = await a_finished_task(store, 2, T - 200 * DAY)

        counts = await pruner(store, tmp_path).prune()

        assert counts is not None and (counts["tasks"], counts["deliveries"]) == (1, 1)
        assert await store.task_by_video(old) is None
        assert await deliveries_of(store, old, 0) == []
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

        assert (await pruner(store, media).preview())["files"] == 1
        counts = await pruner(store, media).prune()

        assert counts is not None and counts["files"] == 1
        assert not (media / "vid1" / "video").exists() and (media / "vid2" / "video").exists()
        files = await store.captures_of([c.task_pk for c in claimed])
        status = {rows[0].video_id: (rows[0].status, rows[0].key) for rows in files.values()}
        assert status == {"vid1": ("expired", None), "vid2": ("kept", "vid2/video")}

        kept_forever = await pruner(store, media, now=T + 100 * DAY, media_retention=0).prune()
        assert kept_forever is not None and "files" not in kept_forever
        assert (media / "vid2" / "video").exists()


async def deliveries_pages(database_url: str) -> int:
    """Pages the deliveries hold: PostgreSQL's table (its main fork), SQLite's whole file (free
    pages included: a file never shrinks here, its freed pages are reused)."""
    if database_url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as conn:
            return int(conn.execute("PRAGMA page_count").fetchone()[0])
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT pg_relation_size('deliveries') / 8192"))
    finally:
        await conn.close()


async def test_the_space_a_pass_frees_is_reused(database_url: str, tmp_path: Path) -> None:
    """A pass that deleted rows leaves their space to the next writes, whether or not the
    server's autovacuum runs (on PostgreSQL the pruner VACUUMs what it pruned): the same load
    again takes no more pages than the first did (without that, about twice as many)."""

    async def load(first: int) -> None:
        for n in range(first, first + 100):
            await submitted(store, n, T - 500 * DAY)
            for k in range(4):
                body = os.urandom(600).hex().encode()  # 1.2 KB, not compressible: kept in the row
                status = "completed" if k == 3 else "in_progress"
                await store.record_delivery(delivery(n, f"msg:{n}:{k}", status, T - 400 * DAY, body=body))

    async with opened(database_url) as (store,):
        await load(0)
        before = await deliveries_pages(database_url)
        counts = await pruner(store, tmp_path, batch=50).prune()
        assert counts is not None and (counts["tasks"], counts["deliveries"]) == (100, 400)
        await load(100)
        after = await deliveries_pages(database_url)
        assert after <= before * 1.2, (before, after)


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


FAST = SimConfig(secret=SECRET, duration_median=0.2, duration_sigma=0.1, content_bytes=20_000)


async def test_over_http_pruned_deliveries_expired_files_stats_and_metrics(
    make_stack: StackFactory, database_url: str
) -> None:
    clock = [time.time()]
    async with make_stack(
        FAST, clock=lambda: clock[0], database_url=database_url, prune_interval=86_400
    ) as stack:
        video_id = (await stack.submit()).json()["id"]
        await stack.wait_status(video_id, "completed")
        body = json.dumps({"id": video_id, "status": "completed"}).encode()
        first = await stack.client.post(
            f"{stack.url}/webhooks", content=body, headers=sign_headers(body, msg_id="ws1")
        )
        assert first.status_code == 200 and first.json()["duplicate"] is False

        async def kept() -> bool:
            files = (await stack.video(video_id))["receiver"]["files"]
            return bool(files) and all(f["status"] == "kept" for f in files)

        await wait_until(kept, timeout=20, what="the result file to be kept")
        before = (await stack.video(video_id))["receiver"]
        delivery_url = f"{stack.url}/v1/deliveries/{first.json()['id']}"
        assert (await stack.client.get(delivery_url)).json()["body_encoding"] == "json"

        clock[0] += 31 * DAY
        counts: dict[str, int] = {}

        async def pruned() -> bool:
            done = await stack.app.state.pruner.prune()  # None: the background pass holds the lease
            counts.update(done or {})
            return done is not None

        await wait_until(pruned, timeout=10, what="a pruning pass")
        assert counts["delivery_bodies"] >= 2 and counts["events"] == 1 and counts["files"] == 1

        shown = (await stack.client.get(delivery_url)).json()
        assert (shown["body"], shown["body_encoding"], shown["headers"]) == (None, "pruned", {})
        replay = await stack.client.post(f"{delivery_url}/replay")
        assert replay.status_code == 409 and replay.json()["error"]["code"] == "delivery_pruned"
        stamp = int(clock[0])
        copy = await stack.client.post(
            f"{stack.url}/webhooks", content=body, headers=sign_headers(body, msg_id="ws1", timestamp=stamp)
        )
        assert copy.status_code == 200 and copy.json() == {"id": first.json()["id"], "duplicate": True}

        after = (await stack.video(video_id))["receiver"]
        assert (after["deliveries"], after["duplicates"]) == (
            before["deliveries"] + 1,
            before["duplicates"] + 1,
        )
        assert (after["polls"], after["anomalies"]) == (before["polls"], before["anomalies"])
        assert [f["status"] for f in after["files"]] == ["expired"]
        content = await stack.client.get(f"{stack.url}/v1/videos/{video_id}/content")
        assert content.status_code == 410 and content.json()["error"]["code"] == "content_expired"

        retention = (await stack.client.get(f"{stack.url}/v1/stats")).json()["retention"]
        assert retention["retention_seconds"] == 2_592_000 and retention["prune_interval_seconds"] == 86_400
        assert retention["last_prune"]["last_run_at"] == int(clock[0])
        assert retention["last_prune"]["pruned"] == counts
        metrics = (await stack.client.get(f"{stack.url}/metrics")).text
        assert f'receiver_pruned_rows_total{{table="files"}} {float(counts["files"])}' in metrics
        gauges = dict(
            line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("receiver_prune_")
        )
        assert float(gauges["receiver_prune_last_run_timestamp_seconds"]) == pytest.approx(clock[0])
        assert float(gauges["receiver_prune_last_duration_seconds"]) >= 0.0


async def cli(*args: str, database_url: str, cwd: Path) -> tuple[int, str, str]:
    env = {**os.environ, "RECEIVER_DATABASE_URL": database_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "receiver", *args, env=env, cwd=cwd, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_prune_dry_run_counts_and_deletes_nothing(database_url: str, tmp_path: Path) -> None:
    now = time.time()
    async with opened(database_url) as (store,):
        for n in range(3):
            await a_finished_task(store, n, now - 40 * DAY)
        await a_finished_task(store, 9, now - DAY)

    code, out, _ = await cli("prune", "--dry-run", database_url=database_url, cwd=tmp_path)
    assert code == 0 and json.loads(out) == {
        "dry_run": True,
        "pruned": {
            "attempts": 0,
            "deliveries": 0,
            "delivery_bodies": 3,
            "events": 3,
            "files": 0,
            "outbox": 0,
            "tasks": 0,
        },
    }
    async with opened(database_url) as (store,):
        assert not any(d.pruned for d in await deliveries_of(store, None, 4))
        assert len(await events_of(store, 4)) == 4

    code, out, _ = await cli("prune", database_url=database_url, cwd=tmp_path)
    assert code == 0 and json.loads(out) == {"dry_run": False, "pruned": {"delivery_bodies": 3, "events": 3}}
    async with opened(database_url) as (store,):
        shown = {d.video_id: d.pruned for d in await deliveries_of(store, None, 4)}
        assert shown == {"vid0": True, "vid1": True, "vid2": True, "vid9": False}


async def test_backup_while_serve_acknowledges(make_stack: StackFactory, tmp_path: Path) -> None:
    async with make_stack(FAST) as stack:
        source = stack.settings.database_url
        acked: list[str] = []
        stop = asyncio.Event()

        async def deliver() -> None:
            # Unmatched workspace deliveries, one after another, until the backup is done
            # (at most 2,000: the loop is bounded whatever happens).
            for n in range(2000):
                if stop.is_set():
                    return
                body = json.dumps({"id": f"video_{n}", "status": "completed"}).encode()
                answer = await stack.client.post(
                    f"{stack.url}/webhooks", content=body, headers=sign_headers(body, msg_id=f"m{n}")
                )
                assert answer.status_code == 200
                acked.append(answer.json()["id"])

        delivering = asyncio.create_task(deliver())
        await wait_until(lambda: len(acked) >= 20, timeout=20, what="deliveries before the backup")
        before = len(acked)
        code, out, err = await cli(
            "backup", str(tmp_path / "copy" / "backup.db"), database_url=source, cwd=tmp_path
        )
        during = len(acked) - before
        stop.set()
        await delivering
        assert code == 0, err
        assert "pages copied" in out
        copy = sqlite3.connect(tmp_path / "copy" / "backup.db")
        try:
            assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            held = copy.execute("SELECT count(*) FROM deliveries").fetchone()[0]
        finally:
            copy.close()
        # Every delivery acknowledged before the backup began is in the copy; serve went on
        # acknowledging while it ran (the copy holds what was committed when it started).
        assert before <= held <= len(acked)
        assert during >= 0

    code, _, err = await cli(
        "backup", str(tmp_path / "x.db"), database_url="postgresql://u@127.0.0.1/db", cwd=tmp_path
    )
    assert code == 2 and "pg_dump" in err and len(err.strip().splitlines()) == 1
