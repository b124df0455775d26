"""Every call we make keeps its budget: a total deadline, stall detection for downloads, and an
answer read as a stream that stops at its cap; result files are kept decoded and served safely."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import secrets
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from receiver.outbound.call import BadEncoding, Budget, TooLarge
from receiver.outbound.provider import Provider, ProviderError
from receiver.settings import Settings, SettingsError
from receiver.simulator.provider import SimConfig
from tests.conftest import SECRET, StackFactory, wait_until
from tests.helpers import SLOW, completed_with, files_of
from tests.rawserver import Exchange, RawServer, drip, file_server, flood, head, send

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


# -- the budget on its own --------------------------------------------------------------------

PLAIN = secrets.token_bytes(30_000) + b"\0" * 200_000


def _deflate(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(wbits=wbits)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("encoding", "raw", "expected"),
    [
        (None, PLAIN, PLAIN),
        ("identity", PLAIN, PLAIN),
        ("gzip", gzip.compress(PLAIN), PLAIN),
        ("X-GZIP", gzip.compress(PLAIN), PLAIN),
        ("gzip", gzip.compress(PLAIN[:5]) + gzip.compress(PLAIN[5:]), PLAIN),  # two members
        ("deflate", _deflate(PLAIN, zlib.MAX_WBITS), PLAIN),  # zlib-wrapped, as meant
        ("deflate", _deflate(PLAIN, -zlib.MAX_WBITS), PLAIN),  # raw, as some servers send
        ("gzip", gzip.compress(PLAIN)[:-20], BadEncoding),  # cut short
        ("gzip", gzip.compress(PLAIN) + b"junk", BadEncoding),
        ("gzip", b"not gzip at all", BadEncoding),
        ("br", b"", BadEncoding),  # not offered, not decoded
        ("gzip, gzip", b"", BadEncoding),
    ],
)
@pytest.mark.parametrize("size", [1, 7000])
async def test_a_body_is_decoded_whole(
    encoding: str | None, raw: bytes, expected: bytes | type, size: int
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, min(len(raw), 50 * size), size):  # one byte at a time: the first 50
            yield raw[start : start + size]
        yield raw[50 * size :]

    budget = Budget(deadline=10, cap=len(PLAIN))
    if isinstance(expected, bytes):
        assert await budget.body(chunks(), encoding).read() == expected
    else:
        with pytest.raises(BadEncoding):
            await budget.body(chunks(), encoding).read()


async def test_a_compression_bomb_stops_at_the_cap() -> None:
    bomb = gzip.compress(b"\0" * 100 * MiB)  # about 100 kB

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(bomb), 64 * 1024):
            yield bomb[start : start + 64 * 1024]

    budget = Budget(deadline=10, cap=MiB)
    body = budget.body(chunks(), "gzip")
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            async for _ in body:
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One 64 kB chunk of it inflates to 64 MB; it is undone a piece at a time, checked each.
    assert peak < MiB and body.received <= 64 * 1024
    assert await budget.body(chunks(), "gzip").prefix() == b"\0" * MiB


# -- the provider ------------------------------------------------------------------------------


async def test_a_dripping_provider_is_cut_off_at_its_deadline(make_stack: StackFactory) -> None:
    # A byte every 0.25 s: a per-read timeout of 1 s never fires, and the whole answer (spaces,
    # which are not a video object) would take 6 s; the call's deadline is 1 s in all.
    async def answer(exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        await send(exchange, writer, head(200, content_type="application/json"))
        await drip(exchange, writer, every=0.25, count=24)

    provider = RawServer(answer)
    async with provider.running() as url, make_stack(provider_url=url, provider_timeout=1) as stack:
        submitted = await stack.submit()
        assert submitted.status_code == 504, submitted.text  # a timeout, not an unreadable answer
        assert set(submitted.json()["error"]) == {"type", "code", "message", "param"}
        (exchange,) = provider.exchanges
        await wait_until(exchange.done.is_set, timeout=5, what="the receiver to hang up")
        assert exchange.sent < len(head(200, content_type="application/json")) + 24

        # A poll is held to the same deadline (one whose lease ran out could be claimed twice).
        async with httpx.AsyncClient() as http:
            with pytest.raises(ProviderError) as failure:
                await Provider(http, url, timeout=1.0).retrieve("video_1")
        assert failure.value.timeout and failure.value.retryable


async def test_an_oversized_provider_answer_stops_at_the_cap(make_stack: StackFactory) -> None:
    total = 100 * MiB

    async def answer(exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        await send(exchange, writer, head(200, content_type="application/json"))
        await send(exchange, writer, b'{"id": "video_1", "object": "video", "pad": "')
        await flood(exchange, writer, total)

    provider = RawServer(answer)
    async with provider.running() as url, make_stack(provider_url=url) as stack:
        submitted = await stack.submit()
        assert submitted.status_code == 502, submitted.text
        (exchange,) = provider.exchanges
        await wait_until(exchange.done.is_set, timeout=10, what="the receiver to hang up")
        # 4 MiB read, plus what the two sockets' buffers held when the receiver hung up.
        assert exchange.sent < total / 4


async def test_a_gzipped_provider_answer_is_read(make_stack: StackFactory) -> None:
    video = {"id": "video_gz", "object": "video", "status": "queued", "model": "m", "prompt": "p"}
    encoded = gzip.compress(json.dumps(video).encode())

    async def answer(exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        await send(exchange, writer, head(200, content_type="application/json", content_encoding="gzip"))
        await send(exchange, writer, encoded)

    provider = RawServer(answer)
    async with provider.running() as url, make_stack(provider_url=url) as stack:
        submitted = await stack.submit()
        assert submitted.status_code == 200, submitted.text
        assert submitted.json()["id"] == "video_gz"


# -- downloads ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(None, 900), ("60", 60), ("0", None), ("15m", None)])
def test_media_timeout_setting(value: str | None, expected: int | None) -> None:
    env = {} if value is None else {"RECEIVER_MEDIA_TIMEOUT": value}
    if expected is None:
        with pytest.raises(SettingsError, match="RECEIVER_MEDIA_TIMEOUT"):
            Settings.from_env(env)
    else:
        settings = Settings.from_env(env)
        assert settings.media_timeout == expected and settings.media_stall == 30


async def test_a_stalled_download_is_abandoned_and_retried_while_a_normal_file_is_kept(
    make_stack: StackFactory,
) -> None:
    normal = secrets.token_bytes(50_000)
    files = file_server({"/normal.mp4": (normal, {"content_type": "video/mp4"})})
    async with files.running() as url, make_stack(SLOW, media_stall=0.5) as stack:
        # Four dripping files take every download slot (the capturer runs four at once).
        dripping = await completed_with(stack, {f"d{i}_url": f"{url}/drip/{i}" for i in range(4)})
        await wait_until(lambda: len(files.exchanges) >= 4, timeout=10, what="four dripping downloads")
        # A normal file of another task still gets a slot: the drips are abandoned as stalled.
        kept = await completed_with(stack, {"video_url": f"{url}/normal.mp4"})

        async def normal_kept() -> bool:
            return (await files_of(stack, kept)).get("video", {}).get("status") == "kept"

        await wait_until(normal_kept, timeout=15, what="the normal file to be kept")
        video = (await files_of(stack, kept))["video"]
        assert video["size"] == len(normal) and video["sha256"] == hashlib.sha256(normal).hexdigest()

        stalled = await files_of(stack, dripping)
        assert all(f["status"] == "pending" and "Stalled" in f["error"] for f in stalled.values()), stalled
        # ... and retried: the same file is asked for again.
        await wait_until(lambda: len(files.of("/drip/0")) >= 2, timeout=20, what="a retry of a stalled file")


async def test_a_file_server_that_never_answers_is_a_stall_too(make_stack: StackFactory) -> None:
    files = file_server({})
    async with files.running() as url, make_stack(SLOW, media_stall=0.5) as stack:
        video_id = await completed_with(stack, {"video_url": f"{url}/silent/1"})

        async def abandoned() -> bool:
            error = (await files_of(stack, video_id))["video"]["error"]
            return error is not None and "Stalled" in error

        await wait_until(abandoned, timeout=10, what="the download to be abandoned as stalled")
        assert (await files_of(stack, video_id))["video"]["status"] == "pending"  # to be retried


async def test_a_download_dripping_faster_than_the_stall_interval_is_still_a_stall(
    make_stack: StackFactory,
) -> None:
    # The attack as seen: a byte every 5 s against a 30 s stall rule, scaled down: a byte every
    # 0.2 s against a 1 s one. Bytes keep coming, but far fewer than a download must bring.
    normal = secrets.token_bytes(50_000)
    files = file_server({"/normal.mp4": (normal, {"content_type": "video/mp4"})}, drip_every=0.2)
    async with files.running() as url, make_stack(SLOW, media_stall=1.0) as stack:
        dripping = await completed_with(stack, {f"d{i}_url": f"{url}/drip/{i}" for i in range(4)})
        await wait_until(lambda: len(files.exchanges) >= 4, timeout=10, what="four dripping downloads")
        kept = await completed_with(stack, {"video_url": f"{url}/normal.mp4"})

        async def normal_kept() -> bool:
            return (await files_of(stack, kept)).get("video", {}).get("status") == "kept"

        await wait_until(normal_kept, timeout=15, what="the normal file to be kept")
        stalled = await files_of(stack, dripping)
        assert all("Stalled" in (f["error"] or "") for f in stalled.values()), stalled


async def test_a_download_that_trickles_past_its_total_deadline_is_retried(make_stack: StackFactory) -> None:
    # A byte every 0.1 s is never a stall, but 1000 of them take 100 s: more than the 1 s allowed.
    files = file_server({}, drip_every=0.1)
    async with files.running() as url, make_stack(SLOW, media_timeout=1) as stack:
        video_id = await completed_with(stack, {"video_url": f"{url}/drip/slow"})

        async def abandoned() -> bool:
            error = (await files_of(stack, video_id))["video"]["error"]
            return error is not None and "DeadlineExceeded" in error

        await wait_until(abandoned, timeout=10, what="the download to be abandoned at its deadline")
        assert (await files_of(stack, video_id))["video"]["status"] == "pending"  # to be retried


async def test_a_gzip_encoded_result_is_kept_decoded(make_stack: StackFactory) -> None:
    original = secrets.token_bytes(20_000) + b"\0" * 300_000
    encoded = gzip.compress(original)
    files = file_server({"/video.mp4": (encoded, {"content_type": "video/mp4", "content_encoding": "gzip"})})
    async with files.running() as url, make_stack(SLOW) as stack:
        video_id = await completed_with(stack, {"video_url": f"{url}/video.mp4"})

        async def settled() -> bool:
            return (await files_of(stack, video_id))["video"]["status"] != "pending"

        await wait_until(settled, timeout=15, what="the file to be kept")
        kept = (await files_of(stack, video_id))["video"]
        assert kept["status"] == "kept", kept
        assert kept["size"] == len(original)
        assert kept["sha256"] == hashlib.sha256(original).hexdigest()
        served = await stack.client.get(f"{stack.url}/v1/videos/{video_id}/content")
        assert served.content == original and "content-encoding" not in served.headers
        assert files.exchanges[0].request.headers["accept-encoding"] == "identity"


async def test_a_result_in_an_encoding_we_did_not_offer_is_refused_with_the_reason(
    make_stack: StackFactory,
) -> None:
    files = file_server(
        {"/video.mp4": (b"\x8b\x00\x80", {"content_type": "video/mp4", "content_encoding": "br"})}
    )
    async with files.running() as url, make_stack(SLOW) as stack:
        video_id = await completed_with(stack, {"video_url": f"{url}/video.mp4"})

        async def settled() -> bool:
            return (await files_of(stack, video_id))["video"]["status"] != "pending"

        await wait_until(settled, timeout=15, what="the file to be refused")
        refused = (await files_of(stack, video_id))["video"]
        assert refused["status"] == "failed" and "Content-Encoding 'br'" in refused["error"]


async def test_the_size_cap_holds_for_the_decoded_bytes(make_stack: StackFactory) -> None:
    # 50 MB of zeros gzip to about 50 kB: the cap (1 MB) is on what the file really is.
    bomb = gzip.compress(b"\0" * 50_000_000)
    files = file_server({"/video.mp4": (bomb, {"content_type": "video/mp4", "content_encoding": "gzip"})})
    async with files.running() as url, make_stack(SLOW, media_max_bytes=MiB) as stack:
        video_id = await completed_with(stack, {"video_url": f"{url}/video.mp4"})

        async def settled() -> bool:
            return (await files_of(stack, video_id))["video"]["status"] != "pending"

        await wait_until(settled, timeout=15, what="the file to be refused")
        refused = (await files_of(stack, video_id))["video"]
        assert refused["status"] == "failed" and "RECEIVER_MEDIA_MAX_BYTES" in refused["error"]


# -- fan-out -----------------------------------------------------------------------------------


async def test_a_subscriber_s_huge_answer_is_read_only_up_to_64_kib(make_stack: StackFactory) -> None:
    total = 100 * MiB

    async def answer(exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        await send(exchange, writer, head(200, content_length=total))
        await flood(exchange, writer, total)

    subscriber = RawServer(answer)
    fast = SimConfig(secret=SECRET, duration_median=0.2, duration_sigma=0.1)
    async with subscriber.running() as url, make_stack(fast) as stack:
        answer_ = await stack.client.post(f"{stack.url}/v1/subscriptions", json={"url": f"{url}/hook"})
        assert answer_.status_code == 200, answer_.text
        video_id = (await stack.submit()).json()["id"]
        await stack.wait_status(video_id, "completed")
        await wait_until(lambda: bool(subscriber.exchanges), timeout=15, what="the event's send")
        exchange = subscriber.exchanges[0]
        await wait_until(exchange.done.is_set, timeout=10, what="the receiver to hang up")
        assert exchange.sent < total / 4

        async def delivered() -> bool:
            events = (await stack.client.get(f"{stack.url}/v1/events", params={"video_id": video_id})).json()
            if not events["data"]:
                return False
            event = (await stack.client.get(f"{stack.url}/v1/events/{events['data'][0]['id']}")).json()
            return [s["status"] for s in event["sends"]] == ["delivered"]

        await wait_until(delivered, timeout=10, what="the send to count as delivered")


async def test_a_subscriber_dripping_its_answer_is_cut_off_at_the_send_deadline(
    make_stack: StackFactory,
) -> None:
    # The status comes at once, then a byte every 0.2 s: never a silent socket, but the attempt
    # has RECEIVER_FANOUT_TIMEOUT (1 s) in all.
    async def answer(exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        await send(exchange, writer, head(200, content_length=1000))
        await drip(exchange, writer, every=0.2, count=1000)

    subscriber = RawServer(answer)
    fast = SimConfig(secret=SECRET, duration_median=0.2, duration_sigma=0.1)
    async with (
        subscriber.running() as url,
        make_stack(fast, fanout_timeout=1, fanout_retry_schedule=(3600.0,)) as stack,
    ):
        answer_ = await stack.client.post(f"{stack.url}/v1/subscriptions", json={"url": f"{url}/hook"})
        assert answer_.status_code == 200, answer_.text
        video_id = (await stack.submit()).json()["id"]
        sends: list[dict[str, Any]] = []

        async def attempted() -> bool:
            events = (await stack.client.get(f"{stack.url}/v1/events", params={"video_id": video_id})).json()
            if not events["data"]:
                return False
            event = (await stack.client.get(f"{stack.url}/v1/events/{events['data'][0]['id']}")).json()
            sends[:] = event["sends"]
            return bool(sends) and sends[0]["attempts"] == 1

        await wait_until(attempted, timeout=15, what="the send's first attempt to be recorded")
        assert sends[0]["status"] != "delivered" and sends[0]["last_error"] == "timed out", sends


# -- serving kept files ------------------------------------------------------------------------

SERVED = [
    # stored type, served type, disposition
    ("video/mp4", "video/mp4", "inline"),
    ("image/png", "image/png", "inline"),
    ("image/svg+xml", "application/octet-stream", "attachment"),
    ("application/javascript", "application/octet-stream", "attachment"),
]


async def test_kept_files_are_served_so_no_browser_runs_them(make_stack: StackFactory) -> None:
    paths = {
        f"/f{i}": (f"body {stored}".encode(), {"content_type": stored})
        for i, (stored, _, _) in enumerate(SERVED)
    }
    files = file_server(paths)
    async with files.running() as url, make_stack(SLOW) as stack:
        video_id = await completed_with(stack, {f"f{i}_url": f"{url}/f{i}" for i in range(len(SERVED))})

        async def all_kept() -> bool:
            found = await files_of(stack, video_id)
            return len(found) == len(SERVED) and all(f["status"] == "kept" for f in found.values())

        await wait_until(all_kept, timeout=15, what="every file to be kept")
        kept = await files_of(stack, video_id)
        for i, (stored, served, disposition) in enumerate(SERVED):
            answer = await stack.client.get(
                f"{stack.url}/v1/videos/{video_id}/content", params={"variant": f"f{i}"}
            )
            assert answer.status_code == 200 and answer.content == f"body {stored}".encode()
            assert kept[f"f{i}"]["content_type"] == stored  # as the provider said
            headers = answer.headers
            assert headers["content-type"].split(";")[0] == served, stored
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["content-security-policy"] == "sandbox; default-src 'none'"
            assert headers["content-disposition"].split(";")[0] == disposition, stored
            assert video_id in headers["content-disposition"]
            ranged = await stack.client.get(
                f"{stack.url}/v1/videos/{video_id}/content",
                params={"variant": f"f{i}"},
                headers={"range": "bytes=0-3"},
            )
            assert ranged.status_code == 206 and ranged.headers["x-content-type-options"] == "nosniff"
