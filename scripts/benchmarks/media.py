"""scripts/bench media: files kept into S3 through the receiver against the S3 client
uploading them directly."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import free_port, machine, rss_peak_kib, serve, start_receiver, wait_ready
from receiver.simulator.provider import dev_secret

MIB = 1024 * 1024


class FileProvider:
    """A provider whose every task completes with one result file of the size its id names,
    streamed from a 1 MiB block (never whole in memory); it notes when each download starts.
    Its tasks stay in progress when polled: `complete` delivers their results by signed webhook,
    all at once, as a provider's callbacks do."""

    def __init__(self) -> None:
        import os

        self.block = os.urandom(MIB)
        self.secret = dev_secret()
        self.started: dict[str, float] = {}
        self.callbacks: dict[str, str] = {}  # video id -> the path of its callback URL
        self.count = 0
        self.base = ""

    def video(self, video_id: str, status: str) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "id": video_id,
            "object": "video",
            "status": status,
            "model": "bench",
            "prompt": "bench",
            "created_at": int(time.time()),
            "content": {},
        }
        if status == "completed":
            answer["content"] = {"video_url": f"{self.base}/files/{video_id}.mp4"}
        return answer

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route

        async def create(request: Request) -> Response:
            body = json.loads(await request.body())
            self.count += 1
            video_id = f"vid_{body['prompt']}_{self.count}"
            self.callbacks[video_id] = "/" + body["callback_url"].split("/", 3)[3]
            return JSONResponse(self.video(video_id, "queued"))

        async def read(request: Request) -> Response:
            return JSONResponse(self.video(request.path_params["video_id"], "in_progress"))

        async def download(request: Request) -> Response:
            video_id = request.path_params["name"].removesuffix(".mp4")
            size = int(video_id.split("_")[1])
            self.started.setdefault(video_id, time.monotonic())

            async def chunks() -> AsyncIterator[bytes]:
                left = size
                while left:
                    piece = self.block[: min(left, MIB)]
                    left -= len(piece)
                    yield piece

            return StreamingResponse(chunks(), media_type="video/mp4", headers={"content-length": str(size)})

        return Starlette(
            routes=[
                Route("/v1/videos", create, methods=["POST"]),
                Route("/v1/videos/{video_id}", read, methods=["GET"]),
                Route("/files/{name}", download, methods=["GET"]),
            ]
        )


@contextlib.asynccontextmanager
async def s3_server(url: str | None) -> AsyncIterator[str]:
    """The S3 endpoint: the given one, else moto's server on a free loopback port."""
    if url:
        yield url
        return
    port = free_port()
    moto = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("moto_server")),
        "-H",
        "127.0.0.1",
        "-p",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(endpoint, moto, "/moto-api/")
        yield endpoint
    finally:
        moto.terminate()
        await moto.wait()


def s3_settings(endpoint: str) -> dict[str, str]:
    import os

    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "bench"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "bench"),
        "AWS_REGION": "us-east-1",
    }


CAPTURE_CONCURRENCY = 4  # receiver.workers.capture.Capturer's downloads at once


async def direct_upload(endpoint: str, bucket: str, sizes: list[int], block: bytes) -> float:
    """The chosen client on its own: the same files put from memory, as many at once as the
    receiver keeps, the large ones as multipart uploads of the receiver's part size with as many
    parts in flight. Seconds."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    from receiver.media.s3 import PART_SIZE, PARTS_IN_FLIGHT

    env = s3_settings(endpoint)
    # The receiver's own client settings (no optional checksums, path addressing): a baseline
    # on botocore's defaults would hash every body once more and flatter the receiver.
    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=AioConfig(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
            max_pool_connections=32,
        ),
    ) as client:

        async def one(n: int, size: int) -> None:
            key = f"direct/{n}"
            if size <= PART_SIZE:
                await client.put_object(Bucket=bucket, Key=key, Body=(block * (size // MIB + 1))[:size])
                return
            upload = (await client.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
            part = (block * (PART_SIZE // MIB))[:PART_SIZE]
            numbers = list(range(1, (size + PART_SIZE - 1) // PART_SIZE + 1))
            etags: dict[int, str] = {}
            limit = asyncio.Semaphore(PARTS_IN_FLIGHT)

            async def send(number: int) -> None:
                async with limit:
                    body = part if number * PART_SIZE <= size else part[: size - (number - 1) * PART_SIZE]
                    answer = await client.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body
                    )
                    etags[number] = answer["ETag"]

            await asyncio.gather(*(send(n) for n in numbers))
            await client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": [{"ETag": etags[n], "PartNumber": n} for n in numbers]},
            )

        files = asyncio.Semaphore(CAPTURE_CONCURRENCY)

        async def limited(n: int, size: int) -> None:
            async with files:
                await one(n, size)

        started = time.monotonic()
        await asyncio.gather(*(limited(n, size) for n, size in enumerate(sizes)))
        return time.monotonic() - started


async def through_writer(endpoint: str, bucket: str, sizes: list[int], block: bytes) -> float:
    """The receiver's media writer alone (receiver.media.s3), fed 1 MiB at a time as a download
    feeds it, as many files at once as the receiver keeps. Seconds."""
    from receiver.media.base import S3Location
    from receiver.media.s3 import S3Media

    keys = s3_settings(endpoint)
    media = S3Media(
        S3Location(
            bucket=bucket,
            prefix="writer",
            endpoint_url=endpoint,
            access_key_id=keys["AWS_ACCESS_KEY_ID"],
            secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
        )
    )
    await media.open()
    files = asyncio.Semaphore(CAPTURE_CONCURRENCY)

    async def one(n: int, size: int) -> None:
        async with files:
            writer = media.writer(f"{n}/video")
            left = size
            while left:
                piece = block[: min(left, MIB)]
                left -= len(piece)
                await writer.write(piece)
            await writer.commit()

    try:
        started = time.monotonic()
        await asyncio.gather(*(one(n, size) for n, size in enumerate(sizes)))
        return time.monotonic() - started
    finally:
        await media.close()


async def complete(client: httpx.AsyncClient, url: str, provider: FileProvider, videos: list[str]) -> None:
    """Every task's result delivered at once by signed webhook (video.completed naming its file)."""
    from receiver.rules.signatures import parse_key, sign_v1

    key = parse_key(provider.secret).material
    timestamp = str(int(time.time()))

    async def deliver(video_id: str) -> None:
        event = {
            "id": f"evt_{video_id}",
            "object": "event",
            "type": "video.completed",
            "created_at": int(timestamp),
            "data": provider.video(video_id, "completed"),
        }
        body = json.dumps(event).encode()
        headers = {
            "content-type": "application/json",
            "webhook-id": f"msg_{video_id}",
            "webhook-timestamp": timestamp,
            "webhook-signature": sign_v1(key, f"msg_{video_id}", timestamp, body),
        }
        answer = await client.post(url + provider.callbacks[video_id], content=body, headers=headers)
        answer.raise_for_status()

    await asyncio.gather(*(deliver(v) for v in videos))


async def keep_through_receiver(
    client: httpx.AsyncClient, url: str, provider: FileProvider, sizes: list[int], timeout: float
) -> float:
    """Submit one task per file, deliver every result at once, wait until every file is kept;
    seconds from the first download's first byte asked to the last file kept (watched every
    20 ms). Found by polling instead, the results of 16 tasks submitted one by one were recorded
    over about 0.85 s (the submits' pace), which bounded the figure more than keeping did."""
    videos = []
    for size in sizes:
        answer = await client.post(f"{url}/v1/videos", json={"model": "bench", "prompt": str(size)})
        answer.raise_for_status()
        videos.append(answer.json()["id"])
    await complete(client, url, provider, videos)
    deadline = time.monotonic() + timeout
    waiting = set(videos)
    while waiting:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(waiting)} files not kept within {timeout:.0f} s")
        # One list read a tick (the newest carry their files), not one read per video, and no
        # more of them than this round's: the watching must not weigh on what it watches.
        page = (await client.get(f"{url}/v1/videos", params={"limit": min(len(videos), 100)})).json()["data"]
        for video in page:
            files = video["receiver"]["files"]
            if video["id"] in waiting and files and files[0]["status"] == "kept":
                waiting.discard(video["id"])
            elif video["id"] in waiting and files and files[0]["status"] == "failed":
                raise RuntimeError(f"keeping {video['id']} failed: {files[0]['error']}")
        await asyncio.sleep(0.02)
    return time.monotonic() - min(provider.started[v] for v in videos)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def bench_media(args: argparse.Namespace) -> int:
    import os

    import botocore.session

    print(machine())
    provider = FileProvider()
    rows: list[tuple[str, int, int, float, float]] = []
    alone: list[tuple[str, int, int, float, float]] = []
    others: list[tuple[str, int, int, float, float, float]] = []  # --against: theirs, direct, ours
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        async with s3_server(args.s3_url) as endpoint, serve(provider.app()) as (provider_url, _):
            provider.base = provider_url
            keys = s3_settings(endpoint)
            bucket = botocore.session.get_session().create_client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
            )
            bucket.create_bucket(Bucket="bench")

            def empty() -> None:
                """Between timings: the S3 server holds its objects in memory, so it would slow
                down round after round; every round starts from an empty bucket."""
                listed = bucket.list_objects_v2(Bucket="bench").get("Contents", [])
                for item in listed:
                    bucket.delete_object(Bucket="bench", Key=item["Key"])

            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "AWS_"))}
            env.update(
                s3_settings(endpoint),
                RECEIVER_PORT=str(port),
                RECEIVER_DATABASE_URL=f"sqlite:///{scratch}/receiver.db",
                RECEIVER_PROVIDER_URL=provider_url,
                RECEIVER_MEDIA_URL="s3://bench/kept",
                RECEIVER_OUTBOUND_ALLOW="127.0.0.0/8",
                RECEIVER_WEBHOOK_SECRETS=provider.secret,
                RECEIVER_POLL_AFTER="3600",  # results come by webhook (FileProvider.complete)
            )
            receiver = await start_receiver(env, scratch)
            other: Any = None
            other_url = ""
            if args.against is not None:
                other_port = free_port()
                other_url = f"http://127.0.0.1:{other_port}"
                other_env = {
                    **env,
                    "RECEIVER_PORT": str(other_port),
                    "RECEIVER_DATABASE_URL": f"sqlite:///{scratch}/against.db",
                    "RECEIVER_MEDIA_URL": "s3://bench/against",
                    "PYTHONPATH": str(args.against),  # ahead of the installed project on sys.path
                }
                other = await start_receiver(other_env, scratch, "against")
            try:
                await wait_ready(url, receiver, "/readyz")
                async with httpx.AsyncClient(timeout=30) as client:
                    await keep_through_receiver(client, url, provider, [MIB], 60)  # warm up
                    steps = ["through", "direct"]
                    if other is not None:
                        await wait_ready(other_url, other, "/readyz")
                        await keep_through_receiver(client, other_url, provider, [MIB], 60)
                        steps.append("against")
                    for label, count, size in (("1 MB", args.small_files, MIB), ("100 MB", 1, 100 * MIB)):
                        sizes = [size] * count
                        for round_ in range(args.rounds):
                            # Rotate which goes first, so a drift of the machine favours none.
                            first = round_ % len(steps)
                            took: dict[str, float] = {}
                            for step in steps[first:] + steps[:first]:
                                if step == "direct":
                                    took[step] = await direct_upload(endpoint, "bench", sizes, provider.block)
                                else:
                                    to = url if step == "through" else other_url
                                    took[step] = await keep_through_receiver(client, to, provider, sizes, 300)
                                await asyncio.to_thread(empty)
                            writer = await through_writer(endpoint, "bench", sizes, provider.block)
                            await asyncio.to_thread(empty)
                            rows.append((label, count, size, took["through"], took["direct"]))
                            alone.append((label, count, size, writer, took["direct"]))
                            if "against" in took:
                                others.append(
                                    (label, count, size, took["against"], took["direct"], took["through"])
                                )
                    await asyncio.to_thread(empty)
                    # Peak RSS growth while keeping a 1 GB file: the peak is reset just before.
                    Path(f"/proc/{receiver.pid}/clear_refs").write_text("5")
                    before = rss_kib(receiver.pid)
                    big = await keep_through_receiver(client, url, provider, [args.big_mib * MIB], 900)
                    peak = rss_peak_kib(receiver.pid)
            finally:
                for process in (receiver, other):
                    if process is not None:
                        process.terminate()
                        await process.wait()
    print(f"{'files':>12} {'through the receiver':>22} {'direct (aiobotocore)':>22} {'ratio':>7}")
    ratios = []
    for label, count, size, through, direct in rows:
        total = count * size / 1e6
        ratio = direct / through
        ratios.append((label, ratio))
        rates = f"{total / through:>16.1f} MB/s {total / direct:>16.1f} MB/s"
        print(f"{count:>4} x {label:>6} {rates} {ratio:>6.0%}")
    # The receiver's end-to-end figure for many small files includes the capturer's pacing (so
    # many downloads at once, one claim per spacing); this row is the media writer on its own.
    print(f"{'files':>12} {'media writer alone':>22} {'direct (aiobotocore)':>22} {'ratio':>7}")
    for label, count, size, writer, direct in alone:
        total = count * size / 1e6
        rates = f"{total / writer:>16.1f} MB/s {total / direct:>16.1f} MB/s"
        print(f"{count:>4} x {label:>6} {rates} {direct / writer:>6.0%}")
    if others:
        name = args.against.name
        print(f"{'files':>12} {'through ' + name:>22} {'direct (aiobotocore)':>22} {'ratio':>7}")
        for label, count, size, theirs, direct, _ in others:
            total = count * size / 1e6
            rates = f"{total / theirs:>16.1f} MB/s {total / direct:>16.1f} MB/s"
            print(f"{count:>4} x {label:>6} {rates} {direct / theirs:>6.0%}")
        for label in dict.fromkeys(o[0] for o in others):
            mine = [o[3] / o[5] for o in others if o[0] == label]
            theirs_ratio = statistics.median(o[4] / o[3] for o in others if o[0] == label)
            each = ", ".join(f"{v:.2f}" for v in mine)
            print(
                f"{label}: this tree {statistics.median(mine):.2f}x as fast as {name} (rounds: {each});"
                f" {name} at {theirs_ratio:.0%} of the direct rate"
            )
    growth = (peak - before) / 1024
    print(
        f"keeping a {args.big_mib} MiB file: {args.big_mib * MIB / 1e6 / big:.1f} MB/s; receiver RSS"
        f" {before / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB: grew {growth:.1f} MiB"
    )
    medians = {label: statistics.median(r for lab, r in ratios if lab == label) for label, _ in ratios}
    ok = all(r >= 0.7 for r in medians.values()) and growth < 64
    print("median ratios: " + ", ".join(f"{k} {v:.0%}" for k, v in medians.items()))
    print("PASS" if ok else "FAIL", "(at least 70% of the direct rate; RSS growth under 64 MiB)")
    return 0 if ok else 1
