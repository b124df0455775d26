"""scripts/bench ingest: durable deliveries/s into the real service against a bare Starlette
endpoint (wrk)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (
    HERE,
    cpu_seconds,
    free_port,
    machine,
    postgres_admin,
    rss_peak_kib,
    scratch_database,
    serve,
    start_bare,
    start_receiver,
    wait_ready,
)
from receiver.rules.records import dedupe_base
from receiver.simulator.provider import SimConfig, Simulator, dev_secret


async def run_wrk(
    url: str, requests_file: Path, seconds: int, connections: int, pause_ms: float | None = None
) -> dict[str, int]:
    """wrk over the prepared requests; with `pause_ms`, each connection waits that long before each
    request (paced.lua), holding a rate rather than the most the server takes."""
    script = "requests.lua" if pause_ms is None else "paced.lua"
    extra = [] if pause_ms is None else [str(max(0, round(pause_ms)))]
    process = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(HERE / "bench_lua" / script),
        url,
        "--",
        str(requests_file),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=seconds + 60)
    for line in out.decode().splitlines():
        if line.startswith("FIRST-ERROR "):
            print("  first error answer:", line[len("FIRST-ERROR ") :][:300])
        if line.startswith("RESULT "):
            return {k: int(v) for k, v in (part.split("=") for part in line.split()[1:])}
    raise RuntimeError(f"wrk printed no result: {out.decode()[-500:]} {err.decode()[-500:]}")


def write_requests(
    path: Path,
    tasks: list[tuple[str, str]],
    secret: str,
    count: int,
    prefix: str,
    seed: int,
    files_url: str,
    finish: list[tuple[str, str]] | None = None,
) -> list[str]:
    """Unique signed deliveries spread over the tasks: mostly in_progress updates, some terminal,
    5% exact repeats of an earlier one. A completed one names its file at `files_url`, the
    simulator on loopback, so the receiver's capture of it never leaves the machine (the simulator
    answers 404, its task still running, and the capture is recorded as failed). Each task of
    `finish` gets one terminal delivery among the first lines (every other one), so it has ended
    once they are sent. Returns the webhook-id of every line, in order."""
    import random as _random

    from receiver.rules.signatures import parse_key, sign_v1

    key = parse_key(secret).material
    rng = _random.Random(seed)
    timestamp = str(int(time.time()))
    lines: list[str] = []
    ids: list[str] = []
    ending = list(finish or [])
    for i in range(count):
        last = bool(ending) and i % 2 == 0
        if not last and lines and rng.random() < 0.05:
            j = rng.randrange(len(lines))
            lines.append(lines[j])
            ids.append(ids[j])
            continue
        task = rng.randrange(len(tasks))
        video_id, token = ending.pop() if last else tasks[task]
        msg = f"{prefix}{i}"
        if last or rng.random() < 0.2:
            status = "completed" if task % 5 else "failed"
            body = json.dumps(
                {
                    "id": f"evt_{prefix}{i}",
                    "object": "event",
                    "type": f"video.{status}",
                    "created_at": int(timestamp),
                    "data": {
                        "id": video_id,
                        "object": "video",
                        "status": status,
                        "content": {"video_url": f"{files_url}/{video_id}.mp4"},
                    },
                },
                separators=(",", ":"),
            )
        else:
            body = json.dumps(
                {
                    "id": video_id,
                    "object": "video",
                    "status": "in_progress",
                    "progress": rng.randrange(100),
                    "model": "seedance-2.0",
                },
                separators=(",", ":"),
            )
        signature = sign_v1(key, msg, timestamp, body.encode())
        lines.append(f"/webhooks/{token}\t{msg}\t{timestamp}\t{signature}\t{body}")
        ids.append(msg)
    path.write_text("\n".join(lines) + "\n")
    return ids


async def stored_keys(database_url: str) -> tuple[set[str], int]:
    """The dedupe keys in a store (for the acknowledged-but-missing check) and its row count."""
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url[len("sqlite:///") :]) as conn:
            keys = [dedupe_base(k) for (k,) in conn.execute("SELECT dedupe_key FROM deliveries")]
        return set(keys), len(keys)
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        keys = [dedupe_base(r[0]) for r in await conn.fetch("SELECT dedupe_key FROM deliveries")]
    finally:
        await conn.close()
    return set(keys), len(keys)


async def ingest_run(
    args: argparse.Namespace,
    label: str,
    database_url: str,
    processes: int,
    scratch: Path,
    routed: bool = False,
    tree: Path | None = None,
) -> dict[str, Any]:
    """`processes` receivers on one store, each loaded by its own wrk (as behind a balancer):
    every process gets deliveries for every task, or with `routed` each gets those of its share
    of the tasks (a balancer that routes by the callback URL's path). `tree`: run the receiver
    from that checkout instead (another version, measured in the same run)."""
    secret = dev_secret()
    ports = [free_port() for _ in range(processes)]
    # The provider: the simulator, in this process; its tasks run for hours, so it stays quiet.
    simulator = Simulator(SimConfig(secret=secret, duration_median=36_000, duration_sigma=0.0))
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RECEIVER_")}
    servers: list[Any] = []
    async with serve(simulator.app) as (provider_url, _):
        env.update(
            RECEIVER_DATABASE_URL=database_url,
            RECEIVER_PROVIDER_URL=provider_url,
            RECEIVER_WEBHOOK_SECRETS=secret,
            RECEIVER_POLL_AFTER="86400",
            RECEIVER_API_KEYS="bench-key",
            RECEIVER_OUTBOUND_ALLOW="127.0.0.1/32",  # the result files are kept from the simulator
        )
        if tree is not None:
            env["PYTHONPATH"] = str(tree)  # ahead of the installed project on sys.path
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        try:
            for n, port in enumerate(ports):
                servers.append(
                    await start_receiver({**env, "RECEIVER_PORT": str(port)}, scratch, f"{label}-{n}")
                )
                await wait_ready(urls[n], servers[n])
            async with httpx.AsyncClient(timeout=30, headers={"authorization": "Bearer bench-key"}) as client:
                gate = asyncio.Semaphore(32)

                async def submit(i: int) -> str:
                    async with gate:
                        answer = await client.post(
                            f"{urls[i % processes]}/v1/videos",
                            json={"model": "seedance-2.0", "prompt": str(i)},
                        )
                        answer.raise_for_status()
                        return str(answer.json()["id"])

                video_ids = await asyncio.gather(*(submit(i) for i in range(args.tasks)))
            # The per-task callback URLs, as the provider (the simulator) received them.
            tasks = [(v, str(simulator.tasks[v].callback_url).rsplit("/", 1)[1]) for v in video_ids]
            connections = max(1, args.connections // processes)
            files, issued = [], []
            for n in range(processes):
                warm, load = scratch / f"warm-{label}-{n}.txt", scratch / f"requests-{label}-{n}.txt"
                files_url = f"{provider_url}/files"
                share = tasks[n::processes] if routed else tasks
                write_requests(warm, share, secret, 20_000, f"warm{n}-", args.seed + 1, files_url)
                issued.append(
                    write_requests(load, share, secret, args.requests, f"m{n}-", args.seed + n, files_url)
                )
                files.append((warm, load))
            await asyncio.gather(
                *(run_wrk(u, f[0], 2, connections) for u, f in zip(urls, files, strict=True))
            )
            cpu_before = [cpu_seconds(s.pid) for s in servers]
            results = await asyncio.gather(
                *(run_wrk(u, f[1], args.seconds, connections) for u, f in zip(urls, files, strict=True))
            )
            seconds = max(r["duration_us"] for r in results) / 1e6
            cpu = sum(cpu_seconds(s.pid) - b for s, b in zip(servers, cpu_before, strict=True)) / seconds
            peak = max(rss_peak_kib(s.pid) for s in servers)
        finally:
            for server in servers:
                server.terminate()
                await server.wait()
    # What was acknowledged must be stored: wrk issues requests in file order with at most
    # `connections` outstanding, so every id before (completed - connections) was answered 2xx.
    keys, rows = await stored_keys(database_url)
    lost: list[str] = []
    checked = 0
    for result, ids in zip(results, issued, strict=True):
        answered = ids[: max(0, min(result["requests"], len(ids)) - connections)]
        checked += len(answered)
        lost += sorted({i for i in answered if f"msg:{i}" not in keys})
    if lost:
        print(f"  {label}: acknowledged but not stored: {', '.join(lost[:5])}")
    missing = len(lost)
    return {
        "rate": sum(r["requests"] for r in results) / seconds,
        "p50": max(r["p50_us"] for r in results) / 1000,
        "p99": max(r["p99_us"] for r in results) / 1000,
        "non2xx": sum(r["non2xx"] for r in results),
        "errors": sum(r["socket_errors"] for r in results),
        "cpu": cpu,
        "peak_mib": peak / 1024,
        "rows": rows,
        "checked": checked,
        "missing": missing,
        "files": files,
    }


async def bare_run(args: argparse.Namespace, files: tuple[Path, Path]) -> dict[str, float]:
    """The bare Starlette endpoint under the same prepared requests and connections."""
    port = free_port()
    bare = await start_bare(port)
    url = f"http://127.0.0.1:{port}"
    warm, load = files
    try:
        await wait_ready(url, bare, "/")
        await run_wrk(url, warm, 2, args.connections)
        baseline = await run_wrk(url, load, args.seconds, args.connections)
    finally:
        bare.terminate()
        await bare.wait()
    return {
        "rate": baseline["requests"] / (baseline["duration_us"] / 1e6),
        "p50": baseline["p50_us"] / 1000,
        "p99": baseline["p99_us"] / 1000,
    }


async def bench_ingest(args: argparse.Namespace) -> int:
    """Rounds of: SQLite, PostgreSQL with one process, with two, the bare endpoint. Each round's
    ratios compare runs a minute apart; the verdict takes the median round of each ratio, so one
    burst of a noisy neighbour moves one round, not the result."""
    print(f"machine: {machine()}")
    pg_admin = await postgres_admin(args)
    scratch = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    print(
        f"workload: {args.tasks} tasks, {args.requests} prepared deliveries per process "
        f"(~80% in_progress, ~20% terminal, 5% repeats), {args.connections} connections in all, "
        f"{args.seconds} s, wrk -t1 per process; {args.rounds} rounds"
    )
    if pg_admin is None:
        print("!!! no PostgreSQL answers (--database-url): the PostgreSQL runs are skipped")

    def show(label: str, r: dict[str, Any]) -> None:
        print(
            f"  {label:<34} {r['rate']:>9,.0f} deliveries/s  p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms  "
            f"non-2xx {r['non2xx']}  socket errors {r['errors']}  server CPU {r['cpu']:.0%}  "
            f"peak RSS {r['peak_mib']:.0f} MiB  missing {r['missing']} of {r['checked']:,} acknowledged"
        )

    rounds: list[dict[str, dict[str, Any]]] = []
    for n in range(args.rounds):
        print(f"round {n + 1}:")
        runs: dict[str, dict[str, Any]] = {}
        runs["sqlite"] = await ingest_run(args, "sqlite", f"sqlite:///{scratch}/receiver-{n}.db", 1, scratch)
        show("SQLite (WAL, synchronous=FULL)", runs["sqlite"])
        if args.against is not None:
            url = f"sqlite:///{scratch}/against-{n}.db"
            runs["against"] = await ingest_run(args, "against", url, 1, scratch, tree=args.against)
            show(f"SQLite, {args.against.name}", runs["against"])
        if pg_admin is not None:
            for label, processes, routed, shown in (
                ("pg1", 1, False, "PostgreSQL, 1 process"),
                ("pg2", 2, True, "PostgreSQL, 2 processes, routed"),
                ("pg2any", 2, False, "PostgreSQL, 2 processes, any"),
            ):
                async with scratch_database(pg_admin) as url:
                    runs[label] = await ingest_run(args, label, url, processes, scratch, routed)
                show(shown, runs[label])
        runs["bare"] = baseline = await bare_run(args, runs["sqlite"]["files"][0])
        print(
            f"  {'bare Starlette endpoint':<34} {baseline['rate']:>9,.0f} requests/s    "
            f"p50 {baseline['p50']:.2f} ms  p99 {baseline['p99']:.2f} ms"
        )
        rounds.append(runs)

    def ratio(top: str, bottom: str) -> tuple[float, str]:
        values = [r[top]["rate"] / r[bottom]["rate"] for r in rounds]
        return statistics.median(values), f"(rounds: {', '.join(f'{v:.2f}' for v in values)})"

    print(f"median of {len(rounds)} rounds:")
    sqlite_ratio, each = ratio("sqlite", "bare")
    sqlite_p99 = statistics.median([r["sqlite"]["p99"] for r in rounds])
    print(f"  SQLite: {sqlite_ratio:.1%} of the bare endpoint {each}, p99 {sqlite_p99:.2f} ms")
    if args.against is not None:
        against_ratio, each = ratio("sqlite", "against")
        against_p99 = statistics.median([r["against"]["p99"] for r in rounds])
        print(
            f"  SQLite, this tree against {args.against.name}: {against_ratio:.2f}x {each};"
            f" its p99 {against_p99:.2f} ms"
        )
    clean = all(
        run["missing"] == 0 and run["non2xx"] == 0 for r in rounds for k, run in r.items() if k != "bare"
    )
    verdicts = {
        "SQLite >= 33% of bare, p99 < 25 ms": sqlite_ratio >= 0.33 and sqlite_p99 < 25,
        "no acknowledged delivery missing, no error answer": clean,
    }
    if pg_admin is not None:
        pg1_ratio, each = ratio("pg1", "sqlite")
        pg1_p99 = statistics.median([r["pg1"]["p99"] for r in rounds])
        print(f"  PostgreSQL, 1 process: {pg1_ratio:.1%} of SQLite {each}, p99 {pg1_p99:.2f} ms")
        pg2_ratio, each = ratio("pg2", "pg1")
        print(f"  PostgreSQL, 2 processes routed by task: {pg2_ratio:.2f}x one process {each}")
        any_ratio, each = ratio("pg2any", "pg1")
        print(f"  PostgreSQL, 2 processes, any task to any process: {any_ratio:.2f}x one process {each}")
        pg2_p99 = statistics.median([max(r["pg2"]["p99"], r["pg2any"]["p99"]) for r in rounds])
        verdicts["PostgreSQL 1 process >= 100% of SQLite, p99 < 25 ms"] = pg1_ratio >= 1.0 and pg1_p99 < 25
        verdicts["PostgreSQL 2 processes >= 1.0x one, routed by task and any task anywhere, p99 < 25 ms"] = (
            pg2_ratio >= 1.0 and any_ratio >= 1.0 and pg2_p99 < 25
        )
    for target, met in verdicts.items():
        print(f"  {'PASS' if met else 'FAIL'}  {target}")
    ok = all(verdicts.values())
    print("result:", "PASS" if ok else "FAIL")
    import shutil

    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if ok else 1
