"""The deployed fleet, for real: Debian's nginx running deploy/nginx.conf (through scripts/fleet)
in front of two `receiver serve` processes on one PostgreSQL database and one S3 bucket.

Deliveries are lost and repeated, one process is SIGKILLed mid-run; every task still ends at the
provider's true result with one event, every kept file is served through nginx by whichever
process answers, and nginx's health checks take the dead process out."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from receiver.simulator.provider import SimConfig, Simulator, result_file
from tests.conftest import SECRET, ReceiverProcess, free_socket, s3_env, serve, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
TASKS = 40
CONTENT = 300 * 1024
FAULTS = SimConfig(
    secret=SECRET,
    duration_median=1.0,
    duration_sigma=0.5,
    fail_rate=0.2,
    drop_rate=0.3,
    duplicate_rate=0.5,
    reorder_rate=0.1,
    content_bytes=CONTENT,
    seed=11,
)


def free_port() -> int:
    sock = free_socket()
    port = int(sock.getsockname()[1])
    sock.close()
    return port


@contextlib.contextmanager
def nginx(port: int, backends: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """scripts/fleet: deploy/nginx.conf with these backends, nginx in the foreground."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(ROOT / "scripts" / "fleet"), str(port), *backends],
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@contextlib.asynccontextmanager
async def processes(
    tmp_path: Path, env_extra: dict[str, str], provider_url: str, public: str
) -> AsyncIterator[list[ReceiverProcess]]:
    made = []
    for n in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "AWS_"))}
        env.update(
            RECEIVER_PUBLIC_URL=public,
            RECEIVER_PROVIDER_URL=provider_url,
            RECEIVER_PROVIDER_TIMEOUT="2",
            RECEIVER_WEBHOOK_SECRETS=SECRET,
            RECEIVER_OUTBOUND_ALLOW="127.0.0.0/8",
            RECEIVER_POLL_AFTER="1",
            RECEIVER_POLL_MAX_INTERVAL="2",
            RECEIVER_POLL_RATE="1000",
        )
        env.update(env_extra)
        home = tmp_path / f"p{n}"
        home.mkdir()
        made.append(ReceiverProcess(env, free_port(), home))
    try:
        yield made
    finally:
        for process in made:
            process.stop()


async def all_videos(client: httpx.AsyncClient, public: str) -> list[dict[str, Any]]:
    videos: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
        answer = await client.get(f"{public}/v1/videos", params=params)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        videos += page["data"]
        if not page["has_more"]:
            return videos
        after = page["data"][-1]["id"]


async def test_nginx_in_front_of_two_processes_one_killed(
    tmp_path: Path, postgres_url: str, s3_endpoint: str, s3_bucket: str
) -> None:
    simulator = Simulator(FAULTS)
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    shared = {"RECEIVER_DATABASE_URL": postgres_url, **s3_env(s3_endpoint, s3_bucket, "fleet")}
    log = tmp_path / "nginx.log"
    async with (
        serve(simulator.app) as provider_url,
        processes(tmp_path, shared, provider_url, public) as (a, b),
        httpx.AsyncClient(timeout=30) as client,
    ):
        await a.start(client)
        await b.start(client)
        with nginx(port, [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], log) as proxy:

            async def up() -> bool:
                if proxy.poll() is not None:
                    text = log.read_text(errors="replace")
                    if proxy.returncode == 3:
                        pytest.skip(f"nginx is not available here: {text.strip()}")
                    raise AssertionError(f"scripts/fleet exited {proxy.returncode}: {text}")
                try:
                    return (await client.get(f"{public}/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(up, timeout=300, what="nginx to answer (it may be installed first)")

            async def submit(i: int) -> str:
                body = {"model": "seedance-2.0", "prompt": f"scene {i}"}
                answer = await client.post(
                    f"{public}/v1/videos", json=body, headers={"Idempotency-Key": f"k{i}"}
                )
                assert answer.status_code == 200, answer.text
                return str(answer.json()["id"])

            videos = [await submit(i) for i in range(TASKS)]

            async def ended(least: int) -> bool:
                done = [v for v in await all_videos(client, public) if v["status"] in ("completed", "failed")]
                return len(done) >= least

            await wait_until(lambda: ended(TASKS // 4), timeout=60, what="the first results")
            a.kill()  # mid-run: deliveries routed to it, its polls and its downloads move to B

            # nginx notices on its own: connections to A are refused, those requests go to B, and
            # after max_fails A is taken out of the ring. Requests on many paths (the ring hashes
            # the path) all answer meanwhile.
            probes = iter(range(10_000))

            async def taken_out() -> bool:
                for _ in range(8):
                    answer = await client.get(f"{public}/healthz", params={"probe": next(probes)})
                    assert answer.status_code == 200, answer.text
                return "temporarily disabled" in log.read_text(errors="replace")

            await wait_until(taken_out, timeout=60, what="nginx to take the dead process out")
            await wait_until(lambda: ended(TASKS), timeout=180, what="every task to end through nginx")

            final = {v["id"]: v for v in await all_videos(client, public)}
            wrong = {
                v: (final[v]["status"], t.final)
                for v, t in simulator.tasks.items()
                if final[v]["status"] != t.final
            }
            assert sorted(final) == sorted(videos)
            assert not wrong, f"tasks not at the provider's final state: {wrong}"

            completed = [v for v in videos if simulator.tasks[v].final == "completed"]
            assert completed

            async def files_kept() -> bool:
                for video in completed:
                    answer = await client.get(f"{public}/v1/videos/{video}")
                    files = answer.json()["receiver"]["files"]
                    if not files or any(f["status"] != "kept" for f in files):
                        return False
                return True

            # A's claimed downloads are taken over once their lease ends.
            await wait_until(files_kept, timeout=120, what="every result file to be kept")
            served: set[str] = set()
            for video in completed:
                answer = await client.get(f"{public}/v1/videos/{video}/content")
                assert answer.status_code == 200, answer.text
                expected = result_file(f"{video}.mp4", CONTENT)
                assert hashlib.sha256(answer.content).digest() == hashlib.sha256(expected).digest()
                ranged = await client.get(
                    f"{public}/v1/videos/{video}/content", headers={"Range": "bytes=100-199"}
                )
                assert ranged.status_code == 206 and ranged.content == expected[100:200]
                served.add(video)
            assert served == set(completed)

            conn = await asyncpg.connect(postgres_url)
            try:
                per_task = await conn.fetchval(
                    "SELECT max(n) FROM (SELECT count(*) AS n FROM events GROUP BY task_pk) x"
                )
                events = await conn.fetchval("SELECT count(*) FROM events")
            finally:
                await conn.close()
            assert per_task == 1 and events == TASKS, "one terminal result, one event, per task"
