"""Shared test machinery: real uvicorn servers on loopback ports, the simulator, waiting helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import uvicorn

from receiver.app import create_app
from receiver.rules.signatures import parse_key, sign_v1
from receiver.server import ConnectionLimits, guarded_protocol
from receiver.settings import Settings
from receiver.simulator.provider import SimConfig, Simulator

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serve(
    app: Any, sock: socket.socket | None = None, *, limits: ConnectionLimits | None = None, **options: Any
) -> AsyncIterator[str]:
    """Run `app` under uvicorn on a loopback port in this event loop, with the receiver's
    guarded HTTP protocol (as `receiver serve` runs it); yield its base URL."""
    sock = sock or free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        http=guarded_protocol(limits or ConnectionLimits()),
        **options,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_until(lambda: server.started or task.done(), timeout=10)
    if task.done():
        task.result()
        raise RuntimeError("server stopped during start-up")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)
        sock.close()


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], *, timeout: float = 10.0, what: str = ""
) -> None:
    """Wait until condition() is true, checking often; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.02)  # wait-ok: a polling interval inside a deadline, not a sync


def sign_headers(
    body: bytes,
    *,
    secret: str = SECRET,
    msg_id: str = "msg_1",
    timestamp: int | None = None,
    prefix: str = "webhook-",
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = sign_v1(parse_key(secret).material, msg_id, ts, body)
    return {
        f"{prefix}id": msg_id,
        f"{prefix}timestamp": ts,
        f"{prefix}signature": signature,
        "content-type": "application/json",
    }


@dataclass
class Stack:
    """A receiver and a simulated provider, each on its own loopback port."""

    url: str
    provider_url: str
    client: httpx.AsyncClient
    simulator: Simulator
    app: Any
    settings: Settings

    @property
    def poller(self) -> Any:
        return self.app.state.poller

    @property
    def store(self) -> Any:
        return self.app.state.ctx.store

    async def submit(self, body: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        body = body or {"model": "seedance-2.0", "prompt": "a red fox"}
        return await self.client.post(f"{self.url}/v1/videos", json=body, **kwargs)

    async def video(self, video_id: str) -> dict[str, Any]:
        response = await self.client.get(f"{self.url}/v1/videos/{video_id}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def wait_status(self, video_id: str, status: str, timeout: float = 15.0) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        async def reached() -> bool:
            seen.update(await self.video(video_id))
            return bool(seen["status"] == status)

        await wait_until(reached, timeout=timeout, what=f"{video_id} to be {status}")
        return seen


StackFactory = Callable[..., contextlib.AbstractAsyncContextManager[Stack]]


@pytest.fixture
def make_stack(tmp_path: Path) -> StackFactory:
    @contextlib.asynccontextmanager
    async def factory(
        sim: SimConfig | None = None, *, clock: Callable[[], float] = time.time, **overrides: Any
    ) -> AsyncIterator[Stack]:
        simulator = Simulator(sim or SimConfig(secret=SECRET, duration_median=0.3, duration_sigma=0.1))
        receiver_sock = free_socket()
        port = receiver_sock.getsockname()[1]
        async with serve(simulator.app) as provider_url:
            settings = Settings.from_env(
                {
                    "RECEIVER_PORT": str(port),
                    "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path}/receiver.db",
                    "RECEIVER_PROVIDER_URL": provider_url,
                    "RECEIVER_WEBHOOK_SECRETS": SECRET,
                    "RECEIVER_OUTBOUND_ALLOW": "127.0.0.0/8",
                }
            )
            settings = replace(settings, **overrides)
            app = create_app(settings, clock=clock)
            limits = ConnectionLimits.from_settings(settings)
            async with (
                serve(
                    app, receiver_sock, limits=limits, timeout_keep_alive=settings.keepalive_timeout
                ) as url,
                httpx.AsyncClient(timeout=10) as client,
            ):
                yield Stack(url, provider_url, client, simulator, app, settings)

    return factory


@dataclass
class Received:
    webhook_id: str
    headers: dict[str, str]
    body: bytes
    at: float


class Subscriber:
    """A downstream service written for the tests: records every request, answers as told.

    `answer(n)` gives the status for the n-th request (0-based); `hang` seconds of silence
    first make it a subscriber that never answers in time.
    """

    def __init__(self, answer: Callable[[int], int] = lambda n: 200, hang: float = 0.0) -> None:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        self.received: list[Received] = []
        self._answer = answer
        self._hang = hang
        self.release = asyncio.Event()

        async def hook(request: Request) -> Response:
            body = await request.body()
            n = len(self.received)
            self.received.append(
                Received(request.headers.get("webhook-id", ""), dict(request.headers), body, time.time())
            )
            if self._hang:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.release.wait(), timeout=self._hang)
            return Response(status_code=self._answer(n))

        self.app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    @property
    def ids(self) -> set[str]:
        """The webhook-ids seen, after the subscriber's own dedupe."""
        return {r.webhook_id for r in self.received}


class ReceiverProcess:
    """`python -m receiver serve` in a child process, killable with SIGKILL."""

    def __init__(self, env: dict[str, str], port: int, cwd: Path) -> None:
        self.env, self.port, self.cwd = env, port, cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    async def start(self, client: httpx.AsyncClient) -> None:
        # The child holds its own copy of the log file; ours is closed at once.
        with open(self.cwd / "receiver.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "receiver", "serve", "--port", str(self.port)],
                env=self.env,
                cwd=self.cwd,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

        async def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, "receiver exited"
            try:
                return (await client.get(f"{self.url}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(ready, timeout=30, what="the receiver to be ready")

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


# -- PostgreSQL ------------------------------------------------------------------------------
# The PostgreSQL cases run against RECEIVER_TEST_DATABASE_URL if set, else a server on
# 127.0.0.1:5432 if one answers (scripts/test starts a throwaway one when neither is there).
# Each test gets a database of its own, dropped afterwards.

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


def _pg_run(url: str, *statements: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    # A loop of its own in a thread: fixtures run inside the tests' event loop too.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def postgres_server() -> str | None:
    """An admin URL of a PostgreSQL server that answers, or None."""
    url = os.environ.get("RECEIVER_TEST_DATABASE_URL") or PG_DEFAULT
    try:
        _pg_run(url, "SELECT 1")
    except Exception:
        return None
    return url


@pytest.fixture
def postgres_url(postgres_server: str | None) -> Iterator[str]:
    """A fresh, empty database on the test server (the test is skipped when there is none)."""
    if postgres_server is None:
        pytest.skip("no PostgreSQL server answers (set RECEIVER_TEST_DATABASE_URL)")
    name = "receiver_test_" + secrets.token_hex(6)
    _pg_run(postgres_server, f"CREATE DATABASE {name}")
    try:
        yield _with_database(postgres_server, name)
    finally:
        _pg_run(postgres_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each backend in turn: the same cases run on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/receiver.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


# -- S3 ----------------------------------------------------------------------------------------
# The S3 cases run against RECEIVER_TEST_S3_URL (an S3-compatible endpoint; scripts/test starts
# moto's server on loopback and sets it). Each test gets a bucket of its own.


def s3_client(endpoint: str) -> Any:
    """A plain (blocking) botocore client, for setting up and looking into buckets from tests."""
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )


@pytest.fixture
def s3_endpoint() -> str:
    endpoint = os.environ.get("RECEIVER_TEST_S3_URL")
    if not endpoint:
        pytest.skip("no S3-compatible server (set RECEIVER_TEST_S3_URL; scripts/test starts moto)")
    return endpoint


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the test S3 server."""
    name = "receiver-test-" + secrets.token_hex(6)
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


def s3_env(endpoint: str, bucket: str, prefix: str = "media") -> dict[str, str]:
    """The settings a receiver process needs to keep its files in `bucket`."""
    return {
        "RECEIVER_MEDIA_URL": f"s3://{bucket}/{prefix}",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
    }
