"""Two `receiver serve` processes on one PostgreSQL database with RECEIVER_MEDIA_URL=s3://...:
a file kept by either process is served, whole and by range, by both."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from receiver.simulator.provider import SimConfig, Simulator, result_file
from tests.conftest import SECRET, ReceiverProcess, free_socket, s3_client, s3_env, serve, wait_until

pytestmark = pytest.mark.anyio

TASKS = 4
SIZE = 7 * 1024 * 1024 + 123  # past one upload part: the multipart path, with a short last part


@contextlib.asynccontextmanager
async def pair(
    tmp_path: Path, database_url: str, provider_url: str, media: dict[str, str]
) -> AsyncIterator[list[ReceiverProcess]]:
    processes = []
    for n in range(2):
        sock = free_socket()
        port = sock.getsockname()[1]
        sock.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "AWS_"))}
        env.update(
            RECEIVER_PORT=str(port),
            RECEIVER_DATABASE_URL=database_url,
            RECEIVER_PROVIDER_URL=provider_url,
            RECEIVER_WEBHOOK_SECRETS=SECRET,
            RECEIVER_OUTBOUND_ALLOW="127.0.0.0/8",
            RECEIVER_POLL_AFTER="1",
            RECEIVER_POLL_MAX_INTERVAL="2",
        )
        env.update(media)
        home = tmp_path / f"p{n}"  # each its own working directory: no shared disk
        home.mkdir()
        processes.append(ReceiverProcess(env, port, home))
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()


async def test_a_file_kept_by_one_process_is_served_by_the_other(
    tmp_path: Path, postgres_url: str, s3_endpoint: str, s3_bucket: str
) -> None:
    simulator = Simulator(SimConfig(secret=SECRET, duration_median=0.5, content_bytes=SIZE, seed=3))
    async with (
        serve(simulator.app) as provider_url,
        pair(tmp_path, postgres_url, provider_url, s3_env(s3_endpoint, s3_bucket, "fleet/media")) as (a, b),
        httpx.AsyncClient(timeout=60) as client,
    ):
        await a.start(client)
        await b.start(client)
        videos = []
        for i in range(TASKS):
            # Submitted through both, so both processes' capturers take part.
            answer = await client.post(
                f"{(a, b)[i % 2].url}/v1/videos", json={"model": "seedance-2.0", "prompt": f"shot {i}"}
            )
            assert answer.status_code == 200, answer.text
            videos.append(answer.json()["id"])

        async def all_kept() -> bool:
            for video in videos:
                files = (await client.get(f"{a.url}/v1/videos/{video}")).json()["receiver"]["files"]
                if not files or any(f["status"] != "kept" for f in files):
                    assert all(f["status"] in ("pending", "kept") for f in files), files
                    return False
            return True

        await wait_until(all_kept, timeout=120, what="every result file to be kept")
        for video in videos:
            expected = result_file(f"{video}.mp4", SIZE)
            for process in (a, b):
                whole = await client.get(f"{process.url}/v1/videos/{video}/content")
                assert whole.status_code == 200, whole.text
                assert hashlib.sha256(whole.content).hexdigest() == hashlib.sha256(expected).hexdigest()
                part = await client.get(
                    f"{process.url}/v1/videos/{video}/content", headers={"Range": "bytes=6291450-6291460"}
                )
                assert part.status_code == 206
                assert part.content == expected[6291450:6291461]
        # Nothing was kept on either machine's disk: every file is an object under the prefix.
        assert not any((tmp_path / f"p{n}" / "media").exists() for n in range(2))
        listed = s3_client(s3_endpoint).list_objects_v2(Bucket=s3_bucket, Prefix="fleet/media/")
        assert len(listed.get("Contents", [])) == TASKS
