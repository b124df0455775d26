"""scripts/bench polling: the learned poll schedule against a naive fixed-interval poller."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import socket
import sqlite3
import statistics
import tempfile
import time

import httpx
import uvicorn

from benchmarks.common import machine, percentile, serve
from receiver.app import create_app
from receiver.settings import Settings
from receiver.simulator.provider import SimConfig, Simulator, dev_secret


@dataclasses.dataclass
class PollingResult:
    label: str
    tasks: int
    gets_per_task: float
    delay_p50: float
    delay_p95: float
    resolved: dict[str, int]


@dataclasses.dataclass
class TaskOutcome:
    submitted: float  # seconds after the run's first submit
    gets: int
    delay: float  # extra delay (result recorded minus result ready) / the task's duration
    resolved_by: str | None


@dataclasses.dataclass
class PollingRun:
    outcomes: list[TaskOutcome]  # in submit order
    stopped_at: float | None  # seconds after the first submit when deliveries stopped
    resumed_at: float | None
    health: list[tuple[float, str]]  # (seconds after the first submit, state) as the receiver saw it


async def polling_workload(
    *,
    lost: bool,
    naive: bool,
    tasks: int,
    rate: float,
    scale: float,
    seed: int,
    outage: tuple[float, float] | None = None,
) -> PollingRun:
    """`tasks` submits at `rate`/s; durations log-normal (median 60 provider-s). With `outage`
    (start, end) in seconds after the first submit, the provider delivers nothing in between."""
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
    health: list[tuple[float, str]] = []
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
                wall_start = time.time()

                async def submit(i: int) -> None:
                    await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                    async with gate:
                        answer = await client.post(
                            f"{url}/v1/videos", json={"model": "seedance-2.0", "prompt": f"{i}"}
                        )
                        answer.raise_for_status()
                        ids.append(answer.json()["id"])

                async def switch() -> None:
                    if outage is None:
                        return
                    await asyncio.sleep(max(0.0, start + outage[0] - time.monotonic()))
                    simulator.deliveries_stopped = True
                    await asyncio.sleep(max(0.0, start + outage[1] - time.monotonic()))
                    simulator.deliveries_stopped = False

                async def watch() -> None:
                    # What the receiver says, as an operator would see it (bounded by the run).
                    last = None
                    while time.monotonic() < start + tasks / rate + 120:
                        states = (await client.get(f"{url}/v1/health/deliveries")).json()["data"]
                        state = states[0]["state"] if states else "unknown"
                        if state != last:
                            health.append((time.monotonic() - start, state))
                            last = state
                        await asyncio.sleep(0.5)

                watcher = asyncio.create_task(watch())
                await asyncio.gather(switch(), *(submit(i) for i in range(tasks)))
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
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            server.should_exit = True
            await asyncio.wait_for(serving, timeout=30)
            server_sock.close()
            with sqlite3.connect(f"{scratch}/bench.db") as conn:
                rows = conn.execute("SELECT video_id, terminal_at, resolved_by FROM tasks").fetchall()
    found = {video_id: (terminal_at, resolved_by) for video_id, terminal_at, resolved_by in rows}
    outcomes = []
    for video_id in sorted(ids, key=lambda v: simulator.tasks[v].created_at):
        terminal_at, resolved_by = found.get(video_id, (None, None))
        if terminal_at is None:
            continue
        task = simulator.tasks[video_id]
        done_at = task.created_at + task.duration
        outcomes.append(
            TaskOutcome(
                task.created_at - wall_start,
                task.gets,
                max(0.0, terminal_at - done_at) / task.duration,
                resolved_by,
            )
        )
    return PollingRun(outcomes, *(outage or (None, None)), health)


def summarise(label: str, outcomes: list[TaskOutcome]) -> PollingResult:
    resolved: dict[str, int] = {}
    for o in outcomes:
        resolved[o.resolved_by or "?"] = resolved.get(o.resolved_by or "?", 0) + 1
    delays = [o.delay for o in outcomes]
    return PollingResult(
        label,
        len(outcomes),
        statistics.fmean(o.gets for o in outcomes) if outcomes else float("nan"),
        percentile(delays, 0.5),
        percentile(delays, 0.95),
        resolved,
    )


async def polling_run(
    label: str, *, lost: bool, naive: bool, tasks: int, rate: float, scale: float, seed: int
) -> PollingResult:
    run = await polling_workload(lost=lost, naive=naive, tasks=tasks, rate=rate, scale=scale, seed=seed)
    warm = int(len(run.outcomes) * 0.25)  # the first quarter teaches the schedule; report the rest
    return summarise(label, run.outcomes[warm:])


def print_result(result: PollingResult) -> None:
    print(
        f"  {result.label:62s} tasks={result.tasks:5d} GETs/task={result.gets_per_task:6.2f} "
        f"extra delay / duration p50={result.delay_p50:6.1%} p95={result.delay_p95:6.1%} "
        f"resolved={result.resolved}",
        flush=True,
    )


async def outage_runs(args: argparse.Namespace) -> dict[str, dict[str, PollingResult]]:
    """Deliveries arrive for one phase, stop for one, come back for one; learned vs naive."""
    phase = args.phase
    tasks = round(3 * phase * args.outage_rate)
    print(
        f"outage workload: {tasks} tasks at {args.outage_rate}/s; deliveries arrive for {phase:.0f} s, "
        f"stop for {phase:.0f} s, come back for {phase:.0f} s (and the drain); phases by submit time"
    )
    found: dict[str, dict[str, PollingResult]] = {}
    for naive in (False, True):
        name = "naive" if naive else "learned"
        run = await polling_workload(
            lost=False,
            naive=naive,
            tasks=tasks,
            rate=args.outage_rate,
            scale=args.scale,
            seed=args.seed,
            outage=(phase, 2 * phase),
        )
        warm = round(0.25 * phase * args.outage_rate)
        stop, resume = phase, 2 * phase
        groups = {
            "arriving": [o for o in run.outcomes[warm:] if o.submitted < stop],
            "stopped": [o for o in run.outcomes if stop <= o.submitted < resume],
            "stopped+15s": [o for o in run.outcomes if stop + 15 <= o.submitted < resume],
            "back": [o for o in run.outcomes if resume <= o.submitted],
            "back+15s": [o for o in run.outcomes if resume + 15 <= o.submitted],
        }
        titles = {
            "arriving": "deliveries arrive (after warm-up)",
            "stopped": "submitted after deliveries stopped",
            "stopped+15s": "submitted >= 15 s after deliveries stopped",
            "back": "submitted after deliveries came back",
            "back+15s": "submitted >= 15 s after they came back",
        }
        found[name] = {}
        for key, outcomes in groups.items():
            result = summarise(f"{name}: {titles[key]}", outcomes)
            found[name][key] = result
            print_result(result)
        if not naive:
            seen = ", ".join(f"{state} at {at:.1f} s" for at, state in run.health)
            print(f"  learned: GET /v1/health/deliveries said: {seen}")
    return found


async def bench_polling(args: argparse.Namespace) -> int:
    print(f"machine: {machine()}")
    print(
        f"workload: {args.tasks} tasks per run at {args.rate}/s, durations log-normal "
        f"(median 60 provider-s, sigma 0.5), time scale {args.scale}x; first 25% of each run is warm-up"
    )
    if args.only_outage:
        outage = await outage_runs(args)
        return 0
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
            print_result(result)
    outage = await outage_runs(args)
    arrive_learned, arrive_naive, lost_learned, lost_naive = results
    learned, naive = outage["learned"], outage["naive"]
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
    print(
        f"  outage, before:    {learned['arriving'].gets_per_task:.2f} GETs/task "
        f"(naive {naive['arriving'].gets_per_task:.2f}; target <= 0.5)"
    )
    print(
        f"  outage, during:    submitted after the stop p50/p95 extra delay "
        f"{learned['stopped'].delay_p50:.1%}/{learned['stopped'].delay_p95:.1%} "
        f"(naive {naive['stopped'].delay_p50:.1%}/{naive['stopped'].delay_p95:.1%}); "
        f">= 15 s after {learned['stopped+15s'].delay_p50:.1%}/{learned['stopped+15s'].delay_p95:.1%} "
        f"(naive {naive['stopped+15s'].delay_p50:.1%}/{naive['stopped+15s'].delay_p95:.1%}; "
        f"target p95 <= 25%); {learned['stopped'].gets_per_task:.2f} GETs/task "
        f"(naive {naive['stopped'].gets_per_task:.2f})"
    )
    print(
        f"  outage, after:     {learned['back'].gets_per_task:.2f} GETs/task, "
        f"{learned['back+15s'].gets_per_task:.2f} from 15 s on (steady state; naive "
        f"{naive['back+15s'].gets_per_task:.2f}; target <= 1)"
    )
    ok = (
        arrive_learned.gets_per_task <= 0.5
        and lost_learned.delay_p95 <= 0.25
        and learned["arriving"].gets_per_task <= 0.5
        and learned["stopped+15s"].delay_p95 <= 0.25
        and learned["back+15s"].gets_per_task <= 1.0
    )
    print("result:", "PASS" if ok else "FAIL")
    return 0 if ok else 1
