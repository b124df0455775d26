"""Benchmarks of the receiver, each against a baseline measured in the same invocation.

    scripts/bench polling   learned poll schedule vs a naive fixed-interval poller

All traffic stays on 127.0.0.1; every load loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import platform
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from receiver.app import create_app
from receiver.settings import Settings
from receiver.simulator import SimConfig, Simulator, dev_secret

# -- shared machinery -----------------------------------------------------------------------------


def machine() -> str:
    cpus = len(__import__("os").sched_getaffinity(0))
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cpus} CPU ({model}), Python {platform.python_version()}, {platform.system()}"


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[tuple[str, socket.socket]]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 15
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", sock
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)
        sock.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# -- polling --------------------------------------------------------------------------------------


@dataclasses.dataclass
class PollingResult:
    label: str
    tasks: int
    gets_per_task: float
    delay_p50: float
    delay_p95: float
    resolved: dict[str, int]


async def polling_run(
    label: str, *, lost: bool, naive: bool, tasks: int, rate: float, scale: float, seed: int
) -> PollingResult:
    """One workload: `tasks` submits at `rate`/s; durations log-normal (median 60 provider-s)."""
    secret = dev_secret()
    simulator = Simulator(
        SimConfig(
            secret=secret,
            duration_median=60.0,
            duration_sigma=0.5,
            time_scale=scale,
            drop_rate=1.0 if lost else 0.0,
            seed=seed,
        )
    )
    with tempfile.TemporaryDirectory() as scratch:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        async with serve(simulator.app) as (provider_url, _):
            settings = Settings.from_env(
                {
                    "RECEIVER_PORT": str(port),
                    "RECEIVER_DATABASE_URL": f"sqlite:///{scratch}/bench.db",
                    "RECEIVER_PROVIDER_URL": provider_url,
                    "RECEIVER_WEBHOOK_SECRETS": secret,
                    "RECEIVER_POLL_RATE": "5000",
                    "RECEIVER_POLL_CONCURRENCY": "64",
                }
            )
            # Provider seconds run `scale` times faster: scale the receiver's own timings alike.
            settings = dataclasses.replace(
                settings,
                poll_after=max(1, round(60 / scale)),
                poll_max_interval=max(1, round(600 / scale)),
                poll_fixed_interval=10.0 / scale if naive else None,
            )
            app = create_app(settings)
            server_sock = socket.socket()
            server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server_sock.bind(("127.0.0.1", port))
            config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
            server = uvicorn.Server(config)
            serving = asyncio.create_task(server.serve(sockets=[server_sock]))
            while not server.started:
                if serving.done():
                    raise RuntimeError("receiver did not start")
                await asyncio.sleep(0.01)
            url = f"http://127.0.0.1:{port}"
            ids: list[str] = []
            async with httpx.AsyncClient(timeout=30) as client:
                gate = asyncio.Semaphore(32)
                start = time.monotonic()

                async def submit(i: int) -> None:
                    await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                    async with gate:
                        answer = await client.post(
                            f"{url}/v1/videos", json={"model": "seedance-2.0", "prompt": f"{i}"}
                        )
                        answer.raise_for_status()
                        ids.append(answer.json()["id"])

                await asyncio.gather(*(submit(i) for i in range(tasks)))
                # Drain: every task must end (bounded: the slowest tasks plus a margin).
                limit = time.monotonic() + 30 * 60 / scale + 60
                db = f"{scratch}/bench.db"
                while time.monotonic() < limit:
                    with sqlite3.connect(db) as conn:
                        open_tasks = conn.execute(
                            "SELECT count(*) FROM tasks WHERE status NOT IN ('completed', 'failed')"
                        ).fetchone()[0]
                    if not open_tasks:
                        break
                    await asyncio.sleep(0.2)
            server.should_exit = True
            await asyncio.wait_for(serving, timeout=30)
            server_sock.close()
            with sqlite3.connect(f"{scratch}/bench.db") as conn:
                rows = conn.execute("SELECT video_id, terminal_at, resolved_by FROM tasks").fetchall()
    order = {vid: i for i, vid in enumerate(ids)}
    warm = int(len(ids) * 0.25)  # the first quarter teaches the schedule; report the rest
    delays, gets, resolved = [], [], {}
    for video_id, terminal_at, resolved_by in rows:
        if order.get(video_id, -1) < warm or terminal_at is None:
            continue
        task = simulator.tasks[video_id]
        done_at = task.created_at + task.duration
        delays.append(max(0.0, terminal_at - done_at) / task.duration)
        gets.append(task.gets)
        resolved[resolved_by] = resolved.get(resolved_by, 0) + 1
    return PollingResult(
        label,
        len(delays),
        statistics.fmean(gets) if gets else float("nan"),
        percentile(delays, 0.5),
        percentile(delays, 0.95),
        resolved,
    )


async def bench_polling(args: argparse.Namespace) -> int:
    print(f"machine: {machine()}")
    print(
        f"workload: {args.tasks} tasks per run at {args.rate}/s, durations log-normal "
        f"(median 60 provider-s, sigma 0.5), time scale {args.scale}x; first 25% of each run is warm-up"
    )
    results = []
    for lost in (False, True):
        for naive in (False, True):
            label = f"{'every delivery lost' if lost else 'every delivery arrives'} / " + (
                "naive poller (every 10 provider-s)" if naive else "learned schedule"
            )
            result = await polling_run(
                label,
                lost=lost,
                naive=naive,
                tasks=args.tasks,
                rate=args.rate,
                scale=args.scale,
                seed=args.seed,
            )
            results.append(result)
            print(
                f"  {label:62s} tasks={result.tasks:5d} GETs/task={result.gets_per_task:6.2f} "
                f"extra delay / duration p50={result.delay_p50:6.1%} p95={result.delay_p95:6.1%} "
                f"resolved={result.resolved}",
                flush=True,
            )
    arrive_learned, arrive_naive, lost_learned, lost_naive = results
    print("summary:")
    print(
        f"  deliveries arrive: {arrive_learned.gets_per_task:.2f} GETs/task "
        f"(naive {arrive_naive.gets_per_task:.2f}; target <= 0.5)"
    )
    print(
        f"  deliveries lost:   p95 extra delay {lost_learned.delay_p95:.1%} of task duration "
        f"(naive {lost_naive.delay_p95:.1%}; target <= 25%), {lost_learned.gets_per_task:.2f} GETs/task "
        f"(naive {lost_naive.gets_per_task:.2f})"
    )
    ok = arrive_learned.gets_per_task <= 0.5 and lost_learned.delay_p95 <= 0.25
    print("result:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    polling = commands.add_parser("polling", help="learned poll schedule vs a naive fixed-interval poller")
    polling.add_argument("--tasks", type=int, default=2000, help="tasks per run (4 runs)")
    polling.add_argument("--rate", type=float, default=30.0, help="submits per second")
    polling.add_argument("--scale", type=float, default=30.0, help="provider seconds per real second")
    polling.add_argument("--seed", type=int, default=1)
    polling.set_defaults(run=bench_polling)
    args = parser.parse_args(argv)
    logging.getLogger("receiver").setLevel(logging.ERROR)  # no start-up warnings between figures
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result: int = runner(args.run(args))
    return result


if __name__ == "__main__":
    sys.exit(main())
