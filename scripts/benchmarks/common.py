"""What every benchmark shares: the machine, servers and stores to measure, ports, percentiles,
process CPU and memory."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import platform
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn


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


HERE = Path(__file__).resolve().parent.parent  # scripts/


def bare_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def take(request: Request) -> Response:
        await request.body()
        return Response(status_code=200)

    return Starlette(routes=[Route("/{path:path}", take, methods=["POST"])])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / __import__("os").sysconf("SC_CLK_TCK")


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


async def wait_ready(url: str, process: asyncio.subprocess.Process, path: str = "/healthz") -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.request("GET" if path != "/" else "POST", url + path)).status_code < 500:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not become ready")


def start_receiver(env: dict[str, str], scratch: Path, name: str = "receiver") -> Any:
    """`receiver serve` in a child process, its log in the scratch folder."""
    return asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "receiver",
        "serve",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=open(scratch / f"{name}.log", "wb"),
    )


def start_bare(port: int) -> Any:
    """The bare Starlette endpoint (the baseline, and the fan-out's subscriber) in a child process:
    one uvicorn worker, uvloop, httptools, no access log, as the service runs."""
    return asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.common:bare_app",
        "--factory",
        "--app-dir",
        str(HERE),
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def scratch_database(admin_url: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one run, dropped afterwards."""
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    name = f"bench_{int(time.time())}_{__import__('os').getpid()}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    finally:
        conn = await asyncpg.connect(admin_url)
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.close()


async def postgres_admin(args: argparse.Namespace) -> str | None:
    """The PostgreSQL server to measure: --database-url, RECEIVER_TEST_DATABASE_URL, else the
    local one if it answers."""
    import asyncpg

    url = args.database_url or __import__("os").environ.get("RECEIVER_TEST_DATABASE_URL")
    url = url or "postgresql://postgres@127.0.0.1:5432/postgres"

    async def answers() -> bool:
        try:
            conn = await asyncpg.connect(url, timeout=3)
        except Exception:
            return False
        await conn.close()
        return True

    return url if await answers() else None
