"""scripts/bench soak: a long run at half the ingest rate with a short retention, sampled every 10 s."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import (
    free_port,
    machine,
    postgres_admin,
    scratch_database,
    serve,
    start_receiver,
    wait_ready,
)
from benchmarks.ingest import ingest_run, run_wrk, write_requests
from receiver.settings import Settings
from receiver.simulator.provider import SimConfig, Simulator, dev_secret


@dataclasses.dataclass
class SoakSample:
    at: float  # seconds since the load began
    acks: int  # acknowledged per second
    p99_ms: float
    errors: int  # error answers and socket errors
    missing: int  # acknowledged deliveries a copy of which was not answered as a duplicate
    rss_mib: float
    fds: int
    db_mib: float
    media_mib: float
    tasks_pruned: int = 0  # task rows the receiver's passes have deleted so far (its /metrics)
    file_mib: float = 0.0  # the part of RSS that is mapped files (SQLite's mmap of its store)


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _tasks_pruned(client: httpx.AsyncClient, url: str) -> int:
    """Task rows pruned so far, from the receiver's own /metrics."""
    answer = await client.get(f"{url}/metrics")
    found = re.search(r'^receiver_pruned_rows_total\{table="tasks"\} (\S+)$', answer.text, re.M)
    return int(float(found.group(1))) if found else 0


def _tree_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


async def _db_mib(database_url: str) -> float:
    if database_url.startswith("sqlite:///"):
        db = Path(database_url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists()) / 2**20
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return float(await conn.fetchval("SELECT pg_database_size(current_database())")) / 2**20
    finally:
        await conn.close()


async def _copies_acknowledged(client: httpx.AsyncClient, url: str, lines: list[str]) -> int:
    """Send again copies of deliveries that were acknowledged: each must be answered as a duplicate
    (the contract holds that even after its body is pruned). Returns how many were not."""
    missing = 0
    for line in lines:
        path, msg, timestamp, signature, body = line.split("\t", 4)
        answer = await client.post(
            url + path,
            content=body.encode(),
            headers={
                "content-type": "application/json",
                "webhook-id": msg,
                "webhook-timestamp": timestamp,
                "webhook-signature": signature,
            },
        )
        if answer.status_code != 200 or answer.json().get("duplicate") is not True:
            missing += 1
    return missing


def _window(samples: list[SoakSample], start: float, end: float) -> list[SoakSample]:
    return [s for s in samples if start <= s.at < end]


def first_cycle_end(samples: list[SoakSample]) -> float | None:
    """When the first retention cycle was complete: the first sample by which a pass had deleted
    task rows. Bodies go after RECEIVER_RETENTION but the rows that keep deliveries idempotent stay
    for RECEIVER_TASK_RETENTION (twice it here): until the first of them are deleted the store is
    still filling up to its steady size by design (an emptied delivery row frees no page), so an
    earlier "first minute" would compare the last minute with a store still half full."""
    return next((s.at for s in samples if s.tasks_pruned > 0), None)


def soak_verdicts(samples: list[SoakSample], cycle_end: float | None) -> list[tuple[str, bool, str]]:
    """Last minute against the first minute after the first retention cycle (medians of the
    10-second samples: one noisy sample moves neither), and the whole run's errors and losses.
    The first minute starts with the sample after the one that saw the cycle end (that sample's
    round still ran partly before it). The two minutes must not overlap."""
    if cycle_end is None:
        return [("windows", False, "no task row was pruned: the first retention cycle never ended")]
    first = _window(samples, cycle_end + 1, cycle_end + 61)
    last = _window(samples, samples[-1].at - 50, samples[-1].at + 1)
    out: list[tuple[str, bool, str]] = []
    if not first or not last or first[-1].at >= last[0].at:
        return [("windows", False, "the run is too short for a minute after the first retention cycle")]
    for name, limit, pick in (
        ("RSS", 1.2, lambda s: s.rss_mib),
        ("database size", 1.2, lambda s: s.db_mib),
        ("p99 ack latency", 1.5, lambda s: s.p99_ms),
    ):
        a, b = statistics.median(pick(s) for s in first), statistics.median(pick(s) for s in last)
        ratio = b / a if a else math.inf
        out.append((name, ratio <= limit, f"{a:.1f} -> {b:.1f} ({ratio:.2f}x, at most {limit}x)"))
    errors = sum(s.errors for s in samples)
    missing = sum(s.missing for s in samples)
    out.append(("error answers", errors == 0, str(errors)))
    out.append(("acknowledged missing", missing == 0, str(missing)))
    return out


async def soak_run(
    args: argparse.Namespace, label: str, database_url: str, rate: float, scratch: Path
) -> bool:
    """One receiver under `rate` signed deliveries/s for args.seconds, in 10-second wrk runs over
    tasks submitted as it goes (the older ones end and age out of the retention), sampled after
    each run."""
    import os
    import random as _random

    secret = dev_secret()
    simulator = Simulator(SimConfig(secret=secret, duration_median=36_000, duration_sigma=0.0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    media = scratch / f"media-{label}"
    retention = {
        "RECEIVER_RETENTION": str(args.retention),
        "RECEIVER_TASK_RETENTION": str(args.retention * 2),
        "RECEIVER_MEDIA_RETENTION": str(args.retention),
        "RECEIVER_PRUNE_INTERVAL": str(args.prune_interval),
    }
    connections = 16
    pause_ms = connections * 1000 / rate
    samples: list[SoakSample] = []
    rng = _random.Random(args.seed)
    async with serve(simulator.app) as (provider_url, _):
        env.update(
            RECEIVER_PORT=str(port),
            RECEIVER_DATABASE_URL=database_url,
            RECEIVER_PROVIDER_URL=provider_url,
            RECEIVER_WEBHOOK_SECRETS=secret,
            RECEIVER_POLL_AFTER="86400",
            RECEIVER_API_KEYS="bench-key",
            RECEIVER_OUTBOUND_ALLOW="127.0.0.1/32",
            RECEIVER_MEDIA_DIR=str(media),
            **retention,
        )
        server = await start_receiver(env, scratch, f"soak-{label}")
        try:
            await wait_ready(url, server)
            async with httpx.AsyncClient(timeout=30, headers={"authorization": "Bearer bench-key"}) as client:
                recent: list[tuple[str, str]] = []

                async def prepare(chunk: int) -> tuple[Path, list[str]]:
                    """A round's requests. New tasks each round; deliveries go to this round's and the
                    last round's, so older tasks end and age out as a real workload's do: each of the
                    last round's gets a terminal one early in this round. (Without that, the few
                    tasks that drew no terminal delivery in their two rounds stayed open for good,
                    and their delivery rows, spread over every page of the deliveries' indexes on
                    increasing keys, kept PostgreSQL from freeing those pages: the indexes grew by a
                    round's worth of pages every round.)"""
                    nonlocal recent
                    gate = asyncio.Semaphore(16)

                    async def submit(i: int) -> tuple[str, str]:
                        # A keep-alive connection the receiver closed as it was reused (idle between
                        # rounds) is a ReadError: sent again with the same Idempotency-Key, which
                        # answers the first task if it was made.
                        for attempt in range(3):
                            try:
                                async with gate:
                                    answer = await client.post(
                                        f"{url}/v1/videos",
                                        json={"model": "seedance-2.0", "prompt": f"{chunk}-{i}"},
                                        headers={"idempotency-key": f"soak-{chunk}-{i}"},
                                    )
                                break
                            except httpx.TransportError:
                                if attempt == 2:
                                    raise
                        answer.raise_for_status()
                        video_id = str(answer.json()["id"])
                        return video_id, str(simulator.tasks[video_id].callback_url).rsplit("/", 1)[1]

                    fresh = list(await asyncio.gather(*(submit(i) for i in range(args.tasks_per_round))))
                    ending = recent[-args.tasks_per_round :]
                    recent = ending + fresh
                    requests = scratch / f"soak-{label}-{chunk}.txt"
                    ids = await asyncio.to_thread(
                        write_requests,
                        requests,
                        recent,
                        secret,
                        int(rate * 10 * 1.5) + 100,
                        f"s{chunk}-",
                        args.seed + chunk,
                        f"{provider_url}/files",
                        ending,
                    )
                    return requests, ids

                requests, ids = await prepare(0)
                started = time.monotonic()
                chunk = 0
                while time.monotonic() - started < args.seconds:
                    # The next round is prepared (its submits are traffic too) while this one runs.
                    upcoming = asyncio.create_task(prepare(chunk + 1))
                    result = await run_wrk(url, requests, 10, connections, pause_ms)
                    # Each connection's cycle is its pause plus the answer's latency: the pause for
                    # the next round leaves room for a typical answer (this round's median). A short
                    # stall (another process taking the cores) moves the median little, so the next
                    # round is not sped up to make up for it: a pause set from the mean latency was
                    # cut after every such round, and the rounds after reached twice the rate,
                    # inflating the store the verdicts compare. A round slow throughout (the median
                    # up too) still shortens the pause, and the next may run above the rate.
                    pause_ms = max(0.0, connections * 1000 / rate - result["p50_us"] / 1000)
                    # wrk sends the lines in order with at most `connections` outstanding.
                    answered = max(0, min(result["requests"], len(ids)) - connections)
                    lines = requests.read_text().splitlines()[:answered]
                    requests.unlink()
                    missing = await _copies_acknowledged(
                        client, url, rng.sample(lines, min(args.check_copies, len(lines)))
                    )
                    samples.append(
                        SoakSample(
                            at=time.monotonic() - started,
                            acks=round(
                                (result["requests"] - result["non2xx"]) / (result["duration_us"] / 1e6)
                            ),
                            p99_ms=result["p99_us"] / 1000,
                            errors=result["non2xx"] + result["socket_errors"],
                            missing=missing,
                            rss_mib=_rss_mib(server.pid),
                            fds=len(os.listdir(f"/proc/{server.pid}/fd")),
                            db_mib=await _db_mib(database_url),
                            media_mib=_tree_mib(media),
                            tasks_pruned=await _tasks_pruned(client, url),
                            file_mib=_rss_mib(server.pid, "RssFile"),
                        )
                    )
                    s = samples[-1]
                    print(
                        f"  {label:8s} {s.at:6.0f} s {s.acks:7d}/s p99 {s.p99_ms:7.1f} ms"
                        f" errors {s.errors:3d} missing {s.missing:3d} RSS {s.rss_mib:6.1f} MiB"
                        f" (files {s.file_mib:5.1f}) fds {s.fds:4d} db {s.db_mib:8.1f} MiB"
                        f" media {s.media_mib:6.1f} MiB tasks pruned {s.tasks_pruned:6d}",
                        flush=True,
                    )
                    chunk += 1
                    requests, ids = await upcoming
        finally:
            with contextlib.suppress(ProcessLookupError):  # it may have stopped by itself
                server.terminate()
            await server.wait()
    cycle_end = first_cycle_end(samples)
    ok = True
    print(
        f"  {label}: last minute vs the first minute after the first retention cycle"
        f" (task rows first pruned by {cycle_end if cycle_end is None else round(cycle_end)} s):"
    )
    for name, passed, detail in soak_verdicts(samples, cycle_end):
        ok &= passed
        print(f"    {name:22s} {'PASS' if passed else 'FAIL'}  {detail}")
    return ok


async def _store_url(
    stack: contextlib.AsyncExitStack, backend: str, scratch: Path, name: str, admin: str | None
) -> str:
    """A fresh store: a SQLite file in the scratch folder, or a scratch PostgreSQL database."""
    if backend == "sqlite":
        return f"sqlite:///{scratch / f'{name}.db'}"
    assert admin is not None
    return str(await stack.enter_async_context(scratch_database(admin)))


async def bench_soak(args: argparse.Namespace) -> int:
    """Per backend: a short ingest run measures the rate, then the soak holds half of it."""
    import shutil

    print(f"machine: {machine()}")
    if "retention" not in {f.name for f in dataclasses.fields(Settings)}:
        print("note: this receiver has no RECEIVER_RETENTION yet: nothing is pruned, the store grows")
    pg_admin = await postgres_admin(args)
    backends = [b for b in args.backends.split(",") if b != "postgres" or pg_admin]
    if "postgres" in args.backends and not pg_admin:
        print("PostgreSQL: no server answers; SQLite only")
    print(
        f"soak: {args.seconds} s per backend, retention {args.retention} s, pruning every"
        f" {args.prune_interval} s, {args.tasks_per_round} new tasks per 10 s"
    )
    ok = True
    for backend in backends:
        scratch = Path(tempfile.mkdtemp(prefix="bench-soak-"))
        try:
            async with contextlib.AsyncExitStack() as stack:
                calibration = argparse.Namespace(
                    tasks=500,
                    requests=max(20_000, args.calibrate_seconds * 5_000),
                    seconds=args.calibrate_seconds,
                    connections=64,
                    seed=args.seed,
                )
                measured = await ingest_run(
                    calibration,
                    f"calibrate-{backend}",
                    await _store_url(stack, backend, scratch, "calibrate", pg_admin),
                    1,
                    scratch,
                )
                rate = measured["rate"] / 2
                print(f"  {backend}: ingest measured {measured['rate']:.0f}/s; the soak holds {rate:.0f}/s")
                ok &= await soak_run(
                    args, backend, await _store_url(stack, backend, scratch, "soak", pg_admin), rate, scratch
                )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    print("result:", "PASS" if ok else "FAIL")
    return 0 if ok else 1
