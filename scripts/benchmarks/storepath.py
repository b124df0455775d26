"""scripts/bench storepath: the store's delivery path alone, group commit against a transaction each."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine, percentile, postgres_admin, scratch_database


async def _store_path_run(
    record: Any, deliveries: list[Any], concurrency: int, seconds: float
) -> tuple[float, float, float, int]:
    """Push deliveries through `record` from `concurrency` workers, bounded in count and time.
    Returns (deliveries/s, p50 ms, p99 ms, done)."""
    latencies: list[float] = []
    queue = iter(deliveries)
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        for delivery in queue:
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            await record(delivery)
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    return (
        len(latencies) / elapsed,
        percentile(latencies, 0.5) * 1000,
        percentile(latencies, 0.99) * 1000,
        len(latencies),
    )


def _path_deliveries(count: int, tasks: int, now: float, prefix: str) -> list[Any]:
    import random as _random

    from receiver.rules.records import NewDelivery

    rng = _random.Random(1)
    out = []
    for i in range(count):
        n = rng.randrange(tasks)
        status = "completed" if rng.random() < 0.2 else "in_progress"
        key = f"msg:{prefix}{i}" if i == 0 or rng.random() > 0.02 else f"msg:{prefix}{rng.randrange(i)}"
        out.append(
            NewDelivery(
                key,
                "task",
                f"tok{n}",
                f"vid{n}",
                "standard-v1",
                {"webhook-id": key},
                b"x" * 450,
                None,
                status,
                {"id": f"vid{n}", "status": status},
                True,
                False,
                now,
                now + 60,
            )
        )
    return out


async def _seed_tasks(store: Any, tasks: int, now: float) -> None:
    from receiver.rules.records import NewTask

    gate = asyncio.Semaphore(32)

    async def one(n: int) -> None:
        async with gate:
            created = await store.create_task(
                NewTask(f"tok{n}", "m", {"model": "m"}, None, None, None, None, now, None)
            )
            await store.finish_submit(created.pk, f"vid{n}", "queued", {"id": f"vid{n}"}, now, now + 60)

    await asyncio.gather(*(one(n) for n in range(tasks)))


async def bench_storepath(args: argparse.Namespace) -> int:
    """The store's delivery path alone (no HTTP), 64 concurrent deliveries: our group-committing
    stores against one transaction per delivery on the same server, and pool sizes."""
    import asyncpg

    from receiver.rules import decide
    from store import open_store, rows
    from store.postgres.changes import write_change

    print(f"machine: {machine()}")
    admin = await postgres_admin(args)
    if admin is None:
        print("!!! no PostgreSQL answers (--database-url)")
        return 1
    now = time.time()
    results: dict[str, tuple[float, float, float, int]] = {}

    def show(label: str) -> None:
        rate, p50, p99, done = results[label]
        print(f"  {label:<52} {rate:>9,.0f} deliveries/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms  ({done:,})")

    scratch = Path(tempfile.mkdtemp(prefix="bench-path-"))
    sqlite = open_store(f"sqlite:///{scratch}/path.db")
    await sqlite.open()
    try:
        await _seed_tasks(sqlite, args.tasks, now)
        deliveries = _path_deliveries(args.deliveries, args.tasks, now, "s")
        results["SQLite store (group commit, one writer thread)"] = await _store_path_run(
            sqlite.record_delivery, deliveries, args.concurrency, args.seconds
        )
    finally:
        await sqlite.close()
    show("SQLite store (group commit, one writer thread)")

    for pool in (2, 8, 32):
        async with scratch_database(admin) as url:
            import store.postgres.base as base

            base.POOL_SIZE = pool
            pg = open_store(url)
            await pg.open()
            try:
                await _seed_tasks(pg, args.tasks, now)
                label = f"PostgreSQL store, asyncpg, group commit, pool {pool}"
                results[label] = await _store_path_run(
                    pg.record_delivery,
                    _path_deliveries(args.deliveries, args.tasks, now, "p"),
                    args.concurrency,
                    args.seconds,
                )
            finally:
                await pg.close()
            show(label)

    async with scratch_database(admin) as url:
        pg = open_store(url)
        await pg.open()
        await _seed_tasks(pg, args.tasks, now)
        await pg.close()
        connections = await asyncpg.create_pool(url, min_size=16, max_size=16)

        async def one_transaction(d: Any) -> None:
            # The same rules (receiver.rules.decide), one transaction and four round trips per delivery.
            async with connections.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    f"SELECT {rows.LEAN} FROM tasks WHERE token_hash = $1 FOR UPDATE", d.token_hash
                )
                task = rows.lean_task(row)
                outcome, change = decide.on_delivery(task, d, video_free=False)
                pk = await conn.fetchval(
                    "INSERT INTO deliveries (dedupe_key, task_pk, video_id, route, verified_by, headers,"
                    " body, status, outcome, received_at, last_seen_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)"
                    " ON CONFLICT (dedupe_key) DO NOTHING RETURNING pk",
                    d.key,
                    task.pk,
                    d.video_id,
                    d.route,
                    d.verified_by,
                    "{}",
                    d.body,
                    d.status,
                    outcome,
                    d.received_at,
                )
                if pk is not None and change:
                    await write_change(conn, task.pk, change)

        try:
            label = "asyncpg, one transaction per delivery, pool 16"
            results[label] = await _store_path_run(
                one_transaction,
                _path_deliveries(args.deliveries, args.tasks, now, "t"),
                args.concurrency,
                args.seconds,
            )
        finally:
            await connections.close()
        show(label)
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    group = results["PostgreSQL store, asyncpg, group commit, pool 8"][0]
    print(f"  group commit (pool 8) vs one transaction per delivery: {group / results[label][0]:.1f}x")
    sqlite_rate = results["SQLite store (group commit, one writer thread)"][0]
    print(f"  PostgreSQL group commit (pool 8) vs SQLite store: {group / sqlite_rate:.1%}")
    return 0
