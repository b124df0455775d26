"""The official `openai` package as the client: what a user with the SDK they already have does."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from receiver.simulator.provider import SimConfig
from tests.conftest import SECRET, Stack, StackFactory, Subscriber, serve, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

KEY = "sdk-test-key"
FAST = SimConfig(secret=SECRET, duration_median=0.3, duration_sigma=0.1)


def sdk(stack: Stack, key: str = KEY) -> openai.AsyncOpenAI:
    # The base URL is the receiver's /v1, exactly as a user would point the SDK at it.
    return openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=10)


async def retrieve_until(client: openai.AsyncOpenAI, video_id: str, status: str) -> Any:
    seen: dict[str, Any] = {}

    async def reached() -> bool:
        seen["video"] = await client.videos.retrieve(video_id)
        return bool(seen["video"].status == status)

    await wait_until(reached, timeout=15, what=f"{video_id} to be {status}")
    return seen["video"]


async def test_create_retrieve_and_list_with_the_sdk(make_stack: StackFactory) -> None:
    async with make_stack(FAST, api_keys=(KEY,)) as stack, sdk(stack) as client:
        video = await client.videos.create(
            model="seedance-2.0",
            prompt="a red fox",
            extra_body={"duration": 5, "return_last_frame": True, "metadata": {"order": "42"}},
        )
        assert video.id.startswith("video_") and video.object == "video"
        assert video.status in ("queued", "in_progress")
        sent = stack.simulator.tasks[video.id].body  # the SDK's form arrived typed
        assert (sent["duration"], sent["return_last_frame"], sent["metadata"]) == (5, True, {"order": "42"})

        done = await retrieve_until(client, video.id, "completed")
        extra = done.model_dump()
        assert extra["receiver"]["resolved_by"] == "webhook"
        assert extra["content"]["last_frame_url"]

        more = [(await client.videos.create(model="seedance-2.0", prompt=f"scene {i}")).id for i in range(4)]
        newest_first = [*reversed(more), video.id]
        first = await client.videos.list(limit=2)
        assert [v.id for v in first.data] == newest_first[:2] and first.has_more
        second = await first.get_next_page()
        assert [v.id for v in second.data] == newest_first[2:4]
        # Auto-pagination walks every page through `after`.
        assert [v.id async for v in client.videos.list(limit=2)] == newest_first


async def test_sdk_errors_are_the_sdk_exceptions(make_stack: StackFactory) -> None:
    async with make_stack(FAST, api_keys=(KEY,)) as stack, sdk(stack) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            await client.videos.create(model="seedance-2.0", prompt="p", seconds="4")
        assert bad.value.status_code == 400 and bad.value.param == "seconds"
        assert bad.value.code == "unknown_parameter"
        with pytest.raises(openai.BadRequestError) as typed:
            await client.videos.create(model="seedance-2.0", prompt="p", extra_body={"duration": "five"})
        assert typed.value.param == "duration"
        with pytest.raises(openai.NotFoundError):
            await client.videos.retrieve("video_nope")
        async with sdk(stack, key="wrong") as stranger:
            with pytest.raises(openai.AuthenticationError):
                await stranger.videos.retrieve("video_nope")
        assert not stack.simulator.tasks


@pytest.fixture
async def subscriber() -> AsyncIterator[tuple[Subscriber, str]]:
    hook = Subscriber()
    async with serve(hook.app) as url:
        yield hook, f"{url}/hook"


async def test_the_sdk_verifies_our_fanout_signature(
    make_stack: StackFactory, subscriber: tuple[Subscriber, str]
) -> None:
    hook, hook_url = subscriber
    async with make_stack(FAST, api_keys=(KEY,)) as stack, sdk(stack) as client:
        auth = {"authorization": f"Bearer {KEY}"}
        body = {"url": hook_url}
        answer = await stack.client.post(f"{stack.url}/v1/subscriptions", json=body, headers=auth)
        secret = answer.json()["secret"]
        video = await client.videos.create(model="seedance-2.0", prompt="a red fox")
        await wait_until(lambda: len(hook.received) == 1, timeout=15, what="the event at the subscriber")
        received = hook.received[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client.webhooks.verify_signature(received.body, received.headers, secret=secret)
        event = json.loads(received.body)
        assert event["type"] == "video.completed" and event["data"]["id"] == video.id
        assert received.headers["webhook-id"] == event["id"]
        with pytest.raises(openai.InvalidWebhookSignatureError):
            client.webhooks.verify_signature(received.body + b" ", received.headers, secret=secret)


async def test_create_retrieve_download_with_no_wait_after_completion(
    make_stack: StackFactory, database_url: str
) -> None:
    """What the README's SDK example does: the file is there the moment the task completes,
    although keeping it is still under way (the provider serves it slowly here)."""
    slow_file = SimConfig(
        secret=SECRET, duration_median=0.3, duration_sigma=0.0, content_bytes=120_000, content_rate=40_000
    )
    async with (
        make_stack(slow_file, api_keys=(KEY,), database_url=database_url) as stack,
        sdk(stack) as client,
    ):
        video = await client.videos.create(model="seedance-2.0", prompt="a red fox")
        done = await retrieve_until(client, video.id, "completed")
        files = {f["variant"]: f for f in done.model_dump()["receiver"]["files"]}
        assert files["video"]["status"] == "pending"  # still being kept: the download relays it
        content = await client.videos.download_content(video.id, variant="video")
        assert content.content == stack.simulator.file_bytes(f"{video.id}.mp4")
        assert content.response.headers["x-content-type-options"] == "nosniff"
