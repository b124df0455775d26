"""Results kept: a completed task's files are downloaded, checked and served with Range."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.media.base import MediaStore, MediaWriter
from receiver.simulator.provider import SimConfig, Simulator
from receiver.workers.capture import LEASE
from tests.conftest import SECRET, ReceiverProcess, Stack, StackFactory, free_socket, serve, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

FAST = SimConfig(secret=SECRET, duration_median=0.2, duration_sigma=0.1, content_bytes=200_000)


async def files_settled(stack: Stack, video_id: str) -> dict[str, dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}

    async def settled() -> bool:
        video = await stack.video(video_id)
        seen.clear()
        seen.update({f["variant"]: f for f in video["receiver"]["files"]})
        return bool(seen) and all(f["status"] != "pending" for f in seen.values())

    await wait_until(settled, timeout=20, what="the result files to settle")
    return seen


async def test_result_files_are_kept_and_served(make_stack: StackFactory) -> None:
    async with make_stack(FAST) as stack:
        video = (await stack.submit({"model": "m", "prompt": "p", "return_last_frame": True})).json()
        url = f"{stack.url}/v1/videos/{video['id']}/content"
        early = await stack.client.get(url)
        assert early.status_code == 404 and early.json()["error"]["code"] == "content_not_kept"
        assert "not completed yet" in early.json()["error"]["message"]
        files = await files_settled(stack, video["id"])
        assert set(files) == {"video", "last_frame"}
        # Lists carry the files exactly as single reads do.
        (listed,) = (await stack.client.get(f"{stack.url}/v1/videos")).json()["data"]
        assert listed["receiver"]["files"] == (await stack.video(video["id"]))["receiver"]["files"]
        source = stack.simulator.file_bytes(f"{video['id']}.mp4")
        assert files["video"]["status"] == "kept" and files["video"]["size"] == len(source)
        assert files["video"]["sha256"] == hashlib.sha256(source).hexdigest()
        assert files["video"]["content_type"] == "video/mp4"
        whole = await stack.client.get(url)
        assert whole.status_code == 200 and whole.content == source
        assert whole.headers["content-type"] == "video/mp4"
        part = await stack.client.get(url, headers={"range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == source[100:200]
        frame = await stack.client.get(url, params={"variant": "last_frame"})
        assert frame.status_code == 200 and frame.content.startswith(b"\x89PNG")
        missing = await stack.client.get(url, params={"variant": "thumbnail"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "content_not_kept"
        assert "names no thumbnail file (it names: last_frame, video)" in missing.json()["error"]["message"]
        metrics = (await stack.client.get(f"{stack.url}/metrics")).text
        assert 'receiver_captures{status="kept"} 2.0' in metrics


async def test_a_file_over_the_cap_is_refused_with_its_reason(make_stack: StackFactory) -> None:
    async with make_stack(FAST, media_max_bytes=100_000) as stack:
        video = (await stack.submit({"model": "m", "prompt": "p", "return_last_frame": True})).json()
        files = await files_settled(stack, video["id"])
        assert files["video"]["status"] == "failed" and "RECEIVER_MEDIA_MAX_BYTES" in files["video"]["error"]
        assert files["last_frame"]["status"] == "kept"  # the small one is still kept
        answer = await stack.client.get(f"{stack.url}/v1/videos/{video['id']}/content")
        assert answer.status_code == 404 and "RECEIVER_MEDIA_MAX_BYTES" in answer.json()["error"]["message"]
        assert answer.json()["error"]["message"].startswith("keeping the video file failed: ")
        metrics = (await stack.client.get(f"{stack.url}/metrics")).text
        assert 'receiver_captures{status="failed"} 1.0' in metrics


async def test_the_sdk_downloads_the_kept_file(make_stack: StackFactory) -> None:
    import openai

    async with make_stack(FAST, api_keys=("k",)) as stack:
        client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="k", max_retries=0)
        video = await client.videos.create(model="seedance-2.0", prompt="a red fox")
        stack.client.headers["authorization"] = "Bearer k"
        await files_settled(stack, video.id)
        content = await client.videos.download_content(video.id, variant="video")
        assert content.content == stack.simulator.file_bytes(f"{video.id}.mp4")
        await client.close()


@pytest.mark.slow
async def test_a_capture_killed_mid_download_starts_over_and_matches(tmp_path: Path) -> None:
    # 3 MB at 600 kB/s: the download is certainly under way when the receiver is killed.
    simulator = Simulator(
        SimConfig(
            secret=SECRET,
            duration_median=0.2,
            duration_sigma=0.1,
            content_bytes=3_000_000,
            content_rate=600_000,
        )
    )
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()  # the child process binds it
    media = tmp_path / "media"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    async with serve(simulator.app) as provider_url, httpx.AsyncClient(timeout=10) as client:
        env.update(
            RECEIVER_PORT=str(port),
            RECEIVER_DATABASE_URL=f"sqlite:///{tmp_path}/receiver.db",
            RECEIVER_PROVIDER_URL=provider_url,
            RECEIVER_WEBHOOK_SECRETS=SECRET,
            RECEIVER_OUTBOUND_ALLOW="127.0.0.0/8",
            RECEIVER_MEDIA_DIR=str(media),
        )
        receiver = ReceiverProcess(env, port, tmp_path)
        try:
            await receiver.start(client)
            answer = await client.post(f"{receiver.url}/v1/videos", json={"model": "m", "prompt": "p"})
            video_id = answer.json()["id"]

            def partial_bytes() -> int:
                return sum(p.stat().st_size for p in media.rglob("*.partial"))

            await wait_until(lambda: partial_bytes() > 100_000, timeout=20, what="a download under way")
            receiver.kill()
            assert not [p for p in media.rglob("*") if p.is_file() and not p.name.endswith(".partial")]

            await receiver.start(client)

            async def kept() -> bool:
                video = (await client.get(f"{receiver.url}/v1/videos/{video_id}")).json()
                return any(f["status"] == "kept" for f in video["receiver"]["files"])

            # The killed attempt's lease runs out (capture.LEASE), then the download starts over.
            await wait_until(kept, timeout=LEASE + 30, what="the capture to finish after the restart")
            source = simulator.file_bytes(f"{video_id}.mp4")
            video = (await client.get(f"{receiver.url}/v1/videos/{video_id}")).json()
            (kept_file,) = video["receiver"]["files"]
            assert kept_file["sha256"] == hashlib.sha256(source).hexdigest()
            assert kept_file["size"] == len(source)
            served = await client.get(f"{receiver.url}/v1/videos/{video_id}/content")
            assert served.content == source
            assert not list(media.rglob("*.partial"))  # the crashed attempt's partial file is gone
        finally:
            receiver.stop()


class HeldMedia:
    """A media store whose writers hold every commit until `release` is set."""

    def __init__(self, inner: MediaStore) -> None:
        self.inner = inner
        self.release = asyncio.Event()
        self.held = 0  # commits waiting for the release

    def writer(self, key: str) -> MediaWriter:
        return _HeldWriter(self, self.inner.writer(key))


class _HeldWriter:
    def __init__(self, media: HeldMedia, inner: MediaWriter) -> None:
        self.media = media
        self.inner = inner

    async def write(self, chunk: bytes) -> None:
        await self.inner.write(chunk)

    async def commit(self) -> None:
        self.media.held += 1
        await self.media.release.wait()
        await self.inner.commit()

    async def abort(self) -> None:
        await self.inner.abort()


async def test_a_small_file_gives_its_download_slot_to_the_next_while_it_is_stored(
    make_stack: StackFactory,
) -> None:
    from tests.helpers import SLOW, completed_with, files_of
    from tests.rawserver import file_server

    served = {f"/f{i}.mp4": (secrets.token_bytes(20_000), {"content_type": "video/mp4"}) for i in range(6)}
    files = file_server(served)
    async with files.running() as url, make_stack(SLOW) as stack:
        capturer = stack.app.state.capturer
        media = HeldMedia(capturer._media)
        capturer._media = media
        videos = [await completed_with(stack, {"video_url": f"{url}/f{i}.mp4"}) for i in range(6)]
        # Four slots, six files: with four files held while being stored, the other two are
        # downloaded all the same (and wait, holding their slots, for their turn to be stored).
        await wait_until(
            lambda: media.held == 4 and len(files.exchanges) == 6, timeout=10, what="six downloads"
        )
        media.release.set()

        async def all_kept() -> bool:
            statuses = [(await files_of(stack, v))["video"]["status"] for v in videos]
            return statuses == ["kept"] * len(videos)

        await wait_until(all_kept, timeout=10, what="every file to be kept")
        for i, video_id in enumerate(videos):
            kept = (await files_of(stack, video_id))["video"]
            assert kept["sha256"] == hashlib.sha256(served[f"/f{i}.mp4"][0]).hexdigest()
            answer = await stack.client.get(f"{stack.url}/v1/videos/{video_id}/content")
            assert answer.content == served[f"/f{i}.mp4"][0]


async def test_an_unsatisfiable_range_is_416(make_stack: StackFactory) -> None:
    async with make_stack(FAST) as stack:
        video = (await stack.submit()).json()
        await files_settled(stack, video["id"])
        url = f"{stack.url}/v1/videos/{video['id']}/content"
        answer = await stack.client.get(url, headers={"range": "bytes=999999999-"})
        assert answer.status_code == 416, answer.text
        assert answer.json()["error"]["code"]
        bad = await stack.client.get(url, params={"variant": "../../etc"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "variant"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"video_url": "https://a/v.mp4"}, (("video", "https://a/v.mp4"),)),
        (
            {"video_url": "https://a/v.mp4", "last_frame_url": "http://a/f.png", "duration": 5},
            (("last_frame", "http://a/f.png"), ("video", "https://a/v.mp4")),
        ),
        ({"video_url": None, "x_url": 5, "Bad-Name_url": "https://a/b"}, ()),
        ({"video_url": "ftp://a/v.mp4", "file_url": "javascript:alert(1)"}, ()),
        ("not an object", ()),
        ({f"v{i}_url": f"https://a/{i}" for i in range(40)}, "16 at most"),
    ],
)
def test_result_files(content: Any, expected: Any) -> None:
    from receiver.rules.decide import MAX_FILES, result_files

    found = result_files({"content": content})
    if expected == "16 at most":
        assert len(found) == MAX_FILES
    else:
        assert found == expected


async def test_the_built_in_simulator_s_files_are_kept_under_serve(tmp_path: Path) -> None:
    """A new user's first run (`serve` with no provider): the demo provider's result files are
    served under its /simulator mount and kept like any provider's."""
    from receiver.app import create_app
    from receiver.settings import Settings

    sock = free_socket()
    settings = Settings.from_env(
        {
            "RECEIVER_PORT": str(sock.getsockname()[1]),
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path}/receiver.db",
        }
    )
    async with serve(create_app(settings), sock) as url, httpx.AsyncClient(timeout=10) as client:
        body = {"model": "seedance-2.0", "prompt": "a red fox", "return_last_frame": True}
        video_id = (await client.post(f"{url}/v1/videos", json=body)).json()["id"]

        async def kept() -> bool:
            video = (await client.get(f"{url}/v1/videos/{video_id}")).json()
            files = video["receiver"].get("files") or []
            return len(files) == 2 and all(f["status"] == "kept" for f in files)

        await wait_until(kept, timeout=30, what="the demo's files to be kept")
        answer = await client.get(f"{url}/v1/videos/{video_id}/content", params={"variant": "video"})
        assert answer.status_code == 200 and answer.headers["content-type"] == "video/mp4"
        assert answer.content
