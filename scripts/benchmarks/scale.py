"""scripts/bench scale: read latency in a large store; /metrics and /v1/stats at ten thousand
and at a million tasks."""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import (
    free_port,
    machine,
    percentile,
    postgres_admin,
    scratch_database,
    start_receiver,
    wait_ready,
)
from receiver.simulator.provider import dev_secret


async def seed_scale(db: Path, tasks: int, deliveries: int, seed: int) -> None:
    """A migrated store with `tasks` tasks and `deliveries` deliveries spread over them."""
    import random as _random

    from store.sqlite import SQLiteStore

    store = SQLiteStore(str(db))
    await store.open()
    await store.close()
    rng = _random.Random(seed)
    now = time.time() - 86_400
    statuses = ["completed"] * 7 + ["failed"] * 2 + ["in_progress"]
    headers = json.dumps(
        {
            "host": "receiver.example",
            "user-agent": "OpenAI/1.0",
            "content-type": "application/json",
            "webhook-id": "msg_x" * 4,
            "webhook-timestamp": "1795500000",
            "webhook-signature": "v1," + "A" * 44,
            "content-length": "300",
        }
    )
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA journal_mode = WAL")
        batch = []
        for i in range(1, tasks + 1):
            status = rng.choice(statuses)
            video = json.dumps(
                {
                    "id": f"video_{i:010d}",
                    "model": "seedance-2.0",
                    "prompt": f"scene {i}",
                    "created_at": int(now),
                    "content": {"video_url": f"https://cdn.example/{i}.mp4"},
                }
            )
            terminal = status in ("completed", "failed")
            batch.append(
                (
                    i,
                    f"video_{i:010d}",
                    f"{i:064x}",
                    status,
                    video,
                    now + i * 0.1,
                    now + i * 0.1 + 60 if terminal else None,
                    "webhook" if terminal else None,
                    None if terminal else now + 86_400,
                )
            )
        conn.executemany(
            "INSERT INTO tasks (pk, video_id, token_hash, status, model, video, request, created_at,"
            " updated_at, terminal_at, resolved_by, next_poll_at)"
            " VALUES (?, ?, ?, ?, 'seedance-2.0', ?, '{}', ?, ?, ?, ?, ?)",
            [(p, v, t, st, vid, c, c, term, rb, nxt) for p, v, t, st, vid, c, term, rb, nxt in batch],
        )
        chunk = 100_000
        for start in range(0, deliveries, chunk):
            rows = []
            for n in range(start, min(start + chunk, deliveries)):
                task = rng.randrange(1, tasks + 1)
                body = json.dumps(
                    {
                        "id": f"video_{task:010d}",
                        "object": "video",
                        "status": "in_progress",
                        "progress": n % 100,
                        "model": "seedance-2.0",
                        "pad": "x" * 150,
                    }
                )
                rows.append(
                    (f"msg:{n:012d}", task, f"video_{task:010d}", headers, body.encode(), now + n * 0.01)
                )
            conn.executemany(
                "INSERT INTO deliveries (dedupe_key, task_pk, video_id, route, verified_by, headers, body,"
                " status, outcome, received_at, last_seen_at) VALUES (?, ?, ?, 'task', 'standard-v1', ?, ?,"
                " 'in_progress', 'applied', ?, ?)",
                [(k, t, v, h, b, r, r) for k, t, v, h, b, r in rows],
            )
            conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("ANALYZE")


async def bench_scale(args: argparse.Namespace) -> int:
    print(f"machine: {machine()}")
    ok = True
    if args.only in (None, "reads"):
        ok &= await scale_reads(args)
    if args.only in (None, "counts"):
        ok &= await scale_counts(args)
    return 0 if ok else 1


async def scale_reads(args: argparse.Namespace) -> bool:
    import random as _random

    scratch = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    db = scratch / "receiver.db"
    started = time.monotonic()
    await seed_scale(db, args.tasks, args.deliveries, args.seed)
    size = db.stat().st_size
    print(
        f"store: {args.tasks:,} tasks, {args.deliveries:,} deliveries, {size / 2**20:,.0f} MiB "
        f"(built in {time.monotonic() - started:.0f} s)"
    )
    port = free_port()
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RECEIVER_")}
    env.update(
        RECEIVER_PORT=str(port),
        RECEIVER_DATABASE_URL=f"sqlite:///{db}",
        RECEIVER_PROVIDER_URL="http://127.0.0.1:9",
        RECEIVER_WEBHOOK_SECRETS=dev_secret(),
        RECEIVER_POLL_AFTER="86400",
        RECEIVER_API_KEYS="bench-key",
    )
    server = await start_receiver(env, scratch)
    url = f"http://127.0.0.1:{port}"
    rng = _random.Random(args.seed)
    ok = True
    try:
        await wait_ready(url, server)
        async with httpx.AsyncClient(
            base_url=url, timeout=30, headers={"authorization": "Bearer bench-key"}
        ) as client:
            cases = {
                "GET /v1/videos/{id}": lambda: (
                    "/v1/videos/" + f"video_{rng.randrange(1, args.tasks + 1):010d}",
                    {},
                ),
                "GET /v1/videos?status=completed": lambda: ("/v1/videos", {"status": "completed"}),
                "GET /v1/videos?status=...&after=": lambda: (
                    "/v1/videos",
                    {
                        "status": rng.choice(["completed", "failed", "in_progress"]),
                        "after": f"video_{rng.randrange(1, args.tasks + 1):010d}",
                    },
                ),
                "GET /v1/deliveries?video_id=": lambda: (
                    "/v1/deliveries",
                    {"video_id": f"video_{rng.randrange(1, args.tasks + 1):010d}"},
                ),
            }
            print(f"latency over {args.requests} sequential requests each (one client, end to end):")
            for label, make in cases.items():
                for _ in range(20):  # warm-up
                    path, params = make()
                    await client.get(path, params=params)
                latencies = []
                for _ in range(args.requests):
                    path, params = make()
                    t0 = time.perf_counter()
                    answer = await client.get(path, params=params)
                    latencies.append((time.perf_counter() - t0) * 1000)
                    if answer.status_code != 200:
                        raise RuntimeError(f"{label}: {answer.status_code} {answer.text[:200]}")
                p99 = percentile(latencies, 0.99)
                ok &= p99 < 20
                print(f"  {label:36s} p50 {percentile(latencies, 0.5):6.2f} ms  p99 {p99:6.2f} ms")
    finally:
        server.terminate()
        await server.wait()
    print("reads:", "PASS" if ok else "FAIL", "(target: p99 < 20 ms each)")
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    return ok


_PAD = "x" * 200  # a task's video JSON about as long as a real one


def _seed_counts_sql(postgres: bool) -> list[str]:
    """Statements seeding `$1`/`?` tasks (7 in 10 completed, 2 failed, 1 in progress), an event and
    a send for every fourth ended task, a kept (or failed) file per completed task."""
    if postgres:
        numbers = "SELECT i FROM generate_series(1, $1::bigint) AS g(i)"
        video_id, token = "'video_' || lpad(i::text, 10, '0')", "lpad(to_hex(i), 64, '0')"
        start = "extract(epoch FROM now()) - 86400"
    else:
        numbers = (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) SELECT i FROM n"
        )
        video_id, token = "printf('video_%010d', i)", "printf('%064x', i)"
        start = "unixepoch() - 86400"
    ended = "i % 10 < 9"
    return [
        "INSERT INTO tasks (video_id, token_hash, status, model, video, request, created_at, updated_at,"
        " terminal_at, resolved_by, next_poll_at)"
        f" SELECT {video_id}, {token},"
        " CASE WHEN i % 10 < 7 THEN 'completed' WHEN i % 10 < 9 THEN 'failed' ELSE 'in_progress' END,"
        f" 'seedance-2.0', '{{\"pad\": \"{_PAD}\"}}', '{{}}', {start} + i * 0.01, {start} + i * 0.01,"
        f" CASE WHEN {ended} THEN {start} + i * 0.01 + 60 END,"
        f" CASE WHEN {ended} THEN CASE WHEN i % 3 = 0 THEN 'poll' ELSE 'webhook' END END,"
        f" CASE WHEN NOT ({ended}) THEN {start} + 864000 END"
        f" FROM ({numbers}) AS s",
        "INSERT INTO subscriptions (id, url, events, secret, status, created_at, updated_at)"
        f" VALUES ('sub_bench', 'https://example.com/hook', NULL, 'whsec_bench', 'active', {start}, {start})",
        "INSERT INTO events (id, task_pk, video_id, type, created_at, data)"
        " SELECT 'evt_' || pk, pk, video_id, 'video.' || status, created_at, '{}' FROM tasks"
        " WHERE terminal_at IS NOT NULL AND pk % 4 = 0",
        "INSERT INTO outbox (event_pk, subscription_pk, status, attempts, next_attempt_at, created_at)"
        " SELECT pk, (SELECT pk FROM subscriptions WHERE id = 'sub_bench'),"
        " CASE pk % 20 WHEN 0 THEN 'dead' WHEN 1 THEN 'failed' WHEN 2 THEN 'pending' ELSE 'delivered' END,"
        f" 1, CASE WHEN pk % 20 = 2 THEN {start} + 864000 END, created_at FROM events",
        "INSERT INTO captures (task_pk, video_id, variant, url, status, created_at)"
        " SELECT pk, video_id, 'video', 'https://cdn.example/v.mp4',"
        " CASE WHEN pk % 50 = 0 THEN 'failed' ELSE 'kept' END, created_at"
        " FROM tasks WHERE status = 'completed'",
    ]


_RECOUNT = (
    "SELECT (SELECT count(*) FROM (SELECT status, resolved_by, count(*) FROM tasks GROUP BY 1, 2) a)"
    " + (SELECT count(*) FROM (SELECT status, count(*) FROM outbox GROUP BY 1) b)"
    " + (SELECT count(*) FROM (SELECT status, count(*) FROM captures GROUP BY 1) c)"
)


async def seed_counts(database_url: str, tasks: int) -> float:
    """A migrated store seeded with `tasks` tasks (the triggers keep the counts as the rows go in,
    and PostgreSQL's appended changes are folded); returns what one GROUP BY recount of every
    counted table takes there (ms), what /metrics and /v1/stats cost before kept counts."""
    from store import open_store

    store = open_store(database_url)
    await store.open()
    try:
        if database_url.startswith("sqlite:///"):
            with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as conn:
                conn.execute("PRAGMA synchronous = OFF")
                for sql in _seed_counts_sql(postgres=False):
                    conn.execute(sql, (tasks,) if "?" in sql else ())
                conn.commit()
                conn.execute("ANALYZE")
                t0 = time.perf_counter()
                conn.execute(_RECOUNT).fetchone()
                recount = (time.perf_counter() - t0) * 1000
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        else:
            import asyncpg

            conn = await asyncpg.connect(database_url)
            try:
                for sql in _seed_counts_sql(postgres=True):
                    await conn.execute(sql, *((tasks,) if "$1" in sql else ()))
                await store.fold_counts()
                await conn.execute("VACUUM ANALYZE")
                t0 = time.perf_counter()
                await conn.fetchval(_RECOUNT)
                recount = (time.perf_counter() - t0) * 1000
            finally:
                await conn.close()
    finally:
        await store.close()
    return recount


async def _serve_store(stack: contextlib.AsyncExitStack, database_url: str, scratch: Path) -> str:
    """A receiver on the store, stopped when `stack` closes; its base URL."""
    port = free_port()
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RECEIVER_")}
    env.update(
        RECEIVER_PORT=str(port),
        RECEIVER_DATABASE_URL=database_url,
        RECEIVER_PROVIDER_URL="http://127.0.0.1:9",
        RECEIVER_WEBHOOK_SECRETS=dev_secret(),
        RECEIVER_POLL_AFTER="86400",
        RECEIVER_API_KEYS="bench-key",
    )
    server = await start_receiver(env, scratch, f"receiver-{port}")

    async def stop() -> None:
        server.terminate()
        await server.wait()

    stack.push_async_callback(stop)
    url = f"http://127.0.0.1:{port}"
    await wait_ready(url, server)
    return url


async def _interleaved(urls: list[str], path: str, requests: int) -> list[list[float]]:
    """Latencies (ms) of sequential GETs of `path`, taking turns between the receivers (the order
    alternating), so a burst of a noisy neighbour lands on every store alike."""
    found: list[list[float]] = [[] for _ in urls]
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=u, timeout=30, headers={"authorization": "Bearer bench-key"})
            )
            for u in urls
        ]
        for turn in range(30 + requests):  # the first 30: warm-up
            order = list(range(len(urls)))
            if turn % 2:
                order.reverse()
            for i in order:
                t0 = time.perf_counter()
                answer = await clients[i].get(path)
                if answer.status_code != 200:
                    raise RuntimeError(f"{path}: {answer.status_code} {answer.text[:200]}")
                if turn >= 30:
                    found[i].append((time.perf_counter() - t0) * 1000)
    return found


async def scale_counts(args: argparse.Namespace) -> bool:
    """/metrics and /v1/stats at the smallest and the largest of --count-tasks, on SQLite and (if a
    server answers) PostgreSQL: the largest may take at most 1.5x the smallest's p50."""
    import shutil

    sizes = sorted(int(s) for s in args.count_tasks.split(","))
    pg_admin = await postgres_admin(args)
    backends = ["sqlite"] + (["postgres"] if pg_admin else [])
    if not pg_admin:
        print("PostgreSQL: no server answers; SQLite only")
    ok = True
    print(
        f"/metrics and /v1/stats, {args.count_requests} sequential requests each per store, taking turns"
        " between the stores (one client, end to end):"
    )
    for backend in backends:
        scratch = Path(tempfile.mkdtemp(prefix="bench-counts-"))
        try:
            async with contextlib.AsyncExitStack() as stack:
                urls = []
                for size in sizes:
                    if backend == "sqlite":
                        database_url = f"sqlite:///{scratch / f'receiver-{size}.db'}"
                    else:
                        assert pg_admin is not None
                        database_url = await stack.enter_async_context(scratch_database(pg_admin))
                    started = time.monotonic()
                    recount = await seed_counts(database_url, size)
                    print(
                        f"  {backend:8s} {size:>9,} tasks: seeded in {time.monotonic() - started:.0f} s;"
                        f" one GROUP BY recount of tasks, sends and files there takes {recount:.1f} ms"
                    )
                    urls.append(await _serve_store(stack, database_url, scratch))
                for path in ("/metrics", "/v1/stats"):
                    small, large = await _interleaved([urls[0], urls[-1]], path, args.count_requests)
                    ratio = percentile(large, 0.5) / percentile(small, 0.5)
                    ok &= ratio <= 1.5
                    print(
                        f"  {backend:8s} {path:10s} p50 {percentile(small, 0.5):5.2f} ms at {sizes[0]:,},"
                        f" {percentile(large, 0.5):5.2f} ms at {sizes[-1]:,} ({ratio:.2f}x);"
                        f" p99 {percentile(small, 0.99):5.2f} / {percentile(large, 0.99):5.2f} ms"
                    )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    print("counts:", "PASS" if ok else "FAIL", "(target: p50 at the largest at most 1.5x at the smallest)")
    return ok
