"""scripts/bench driver: asyncpg against psycopg 3 on the ack path's read and batch insert."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from benchmarks.common import machine, percentile, postgres_admin, scratch_database

# The writer's INSERT column set, one array per column (the writer also returns the new keys' pks).
_DRIVER_INSERT = (
    "INSERT INTO deliveries (dedupe_key, task_pk, video_id, route, verified_by, headers, body,"
    " event_type, status, outcome, received_at, last_seen_at, repeats) SELECT * FROM unnest($1::text[],"
    " $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[], $8::text[], $9::text[],"
    " $10::text[], $11::float8[], $12::float8[], $13::int[])"
    " ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key, pk"
)


def _binary_placeholders(sql: str) -> str:
    """asyncpg's $n placeholders as psycopg's binary ones (%(pn)b: in any order, as in _READ)."""
    import re

    return re.sub(r"\$(\d+)", r"%(p\1)b", sql.replace("%", "%%"))


def _driver_batches(batches: int, tasks: int, now: float, prefix: str) -> list[list[tuple[Any, ...]]]:
    """Batches of 32 deliveries: (dedupe key, token hash, video id, headers, body, event type,
    status), all new keys, each on one of `tasks` tasks."""
    import hashlib
    import random as _random

    rng = _random.Random(7)
    out = []
    for b in range(batches):
        batch = []
        for i in range(32):
            n, key = rng.randrange(tasks), f"msg_{prefix}{b}_{i}"
            status = "completed" if rng.random() < 0.2 else "in_progress"
            headers = json.dumps({"webhook-id": key, "webhook-timestamp": str(int(now))})
            body = json.dumps({"id": f"vid{n}", "status": status, "key": key}).encode().ljust(800, b" ")
            token = hashlib.sha256(f"tok{n}".encode()).hexdigest()
            batch.append((key, token, f"vid{n}", headers, body, f"video.{status}", status))
        out.append(batch)
    return out


def _driver_columns(batch: list[tuple[Any, ...]], pks: dict[str, int], now: float) -> list[list[Any]]:
    """_DRIVER_INSERT's arrays for a batch, task_pk from the read (as receiver.rules.decide plans it)."""
    n = len(batch)
    return [
        [d[0] for d in batch],
        [pks.get(d[1]) for d in batch],
        [d[2] for d in batch],
        ["task"] * n,
        ["standard-v1"] * n,
        [d[3] for d in batch],
        [d[4] for d in batch],
        [d[5] for d in batch],
        [d[6] for d in batch],
        ["applied" if d[6] == "completed" else "unchanged" for d in batch],
        [now] * n,
        [now] * n,
        [0] * n,
    ]


async def _driver_run(
    batch_io: Any, batches: list[list[tuple[Any, ...]]], seconds: float
) -> dict[str, float]:
    """`batch_io(batch) -> rows inserted` for each batch, one after another on one connection (as
    the writer does), bounded in count and time."""
    latencies: list[float] = []
    inserted = 0
    deadline = time.monotonic() + seconds
    cpu, began = time.process_time(), time.perf_counter()
    for batch in batches:
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        inserted += await batch_io(batch)
        latencies.append(time.perf_counter() - started)
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    return {
        "batches/s": len(latencies) / elapsed,
        "deliveries/s": inserted / elapsed,
        "cpu_us": cpu / max(inserted, 1) * 1e6,
        "p50": percentile(latencies, 0.5) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "batches": len(latencies),
    }


def _driver_read(batch: list[tuple[Any, ...]]) -> list[list[str]]:
    """_READ's arrays, as the writer passes them: token hashes, video ids, dedupe keys."""
    return [list({d[1] for d in batch}), list({d[2] for d in batch}), [d[0] for d in batch]]


async def bench_driver(args: argparse.Namespace) -> int:
    """asyncpg against psycopg 3 (async) on the ack path's database work: per batch of 32, the
    writer's read (store.postgres.writer._READ) and one unnest INSERT of the writer's columns, on
    one autocommit connection, prepared. psycopg gets binary parameters (%b: a bytea[] of bodies in
    text would be hex-escaped both ways) and binary results, as asyncpg always uses.
    Run asyncpg, psycopg, asyncpg: the second asyncpg run shows the drift."""
    import asyncpg
    import psycopg

    from store import open_store
    from store.postgres.writer import _READ

    print(f"machine: {machine()}")
    print(
        f"asyncpg {asyncpg.__version__}, psycopg {psycopg.__version__} ({psycopg.pq.__impl__} implementation)"
    )
    admin = await postgres_admin(args)
    if admin is None:
        print("!!! no PostgreSQL answers (--database-url)")
        return 1
    now = time.time()
    read_pg, insert_pg = _binary_placeholders(_READ), _binary_placeholders(_DRIVER_INSERT)
    results: dict[str, dict[str, float]] = {}
    async with scratch_database(admin) as url:
        pg = open_store(url)  # migrates the scratch database
        await pg.open()
        await pg.close()
        conn = await asyncpg.connect(url)
        await conn.execute(
            "INSERT INTO tasks (video_id, token_hash, status, model, video, request, created_at,"
            " updated_at, listed_tx) SELECT 'vid' || n, encode(sha256(('tok' || n)::bytea), 'hex'),"
            " 'in_progress', 'm', '{}', '{\"model\":\"m\"}', $1, $1, pg_current_xact_id()::text::bigint"
            " FROM generate_series(0, $2 - 1) n",
            now,
            args.tasks,
        )
        await conn.execute("ANALYZE tasks")
        await conn.close()

        for run, label in enumerate(("asyncpg", "psycopg", "asyncpg again")):
            batches = _driver_batches(args.batches, args.tasks, now, f"r{run}_")
            if label.startswith("asyncpg"):
                a = await asyncpg.connect(url)

                async def asyncpg_batch(batch: Any, a: Any = a) -> int:
                    found = await a.fetch(_READ, *_driver_read(batch))
                    pks = {r["token_hash"]: r["pk"] for r in found if r["pk"] is not None}
                    return len(await a.fetch(_DRIVER_INSERT, *_driver_columns(batch, pks, now)))

                try:
                    results[label] = await _driver_run(asyncpg_batch, batches, args.seconds)
                finally:
                    await a.close()
            else:
                p = await psycopg.AsyncConnection.connect(url, autocommit=True)

                async def psycopg_batch(batch: Any, p: Any = p) -> int:
                    params = {f"p{i}": v for i, v in enumerate(_driver_read(batch), 1)}
                    cur = await p.execute(read_pg, params, prepare=True, binary=True)
                    found = await cur.fetchall()
                    names = [c.name for c in cur.description or ()]
                    pk, token = names.index("pk"), names.index("token_hash")
                    pks = {r[token]: r[pk] for r in found if r[pk] is not None}
                    params = {f"p{i}": v for i, v in enumerate(_driver_columns(batch, pks, now), 1)}
                    cur = await p.execute(insert_pg, params, prepare=True, binary=True)
                    return len(await cur.fetchall())

                try:
                    results[label] = await _driver_run(psycopg_batch, batches, args.seconds)
                finally:
                    await p.close()
            r = results[label]
            print(
                f"  {label:<14} {r['batches/s']:>7,.0f} batches/s {r['deliveries/s']:>9,.0f} deliveries/s"
                f"  client CPU {r['cpu_us']:6.1f} us/delivery  batch p50 {r['p50']:.2f} ms"
                f"  p99 {r['p99']:.2f} ms  ({r['batches']:,.0f} batches)"
            )
    # psycopg ran between the two asyncpg runs (the table grows): against their mean.
    first, again, other = results["asyncpg"], results["asyncpg again"], results["psycopg"]
    rate, cpu = ((first[k] + again[k]) / 2 for k in ("deliveries/s", "cpu_us"))
    print(f"  psycopg/asyncpg: rate {other['deliveries/s'] / rate:.2f}x,", end=" ")
    print(f"client CPU per delivery {other['cpu_us'] / cpu:.2f}x (against the mean of both asyncpg runs)")
    return 0
