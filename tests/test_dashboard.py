"""The dashboard in a real browser: Playwright driving Debian's Chromium against the real service.

Skipped, loudly, when Playwright or Chromium is missing (./scripts/test installs Chromium when
it can). Every wait has a deadline, and each test as a whole is bounded by `fail_after`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from receiver.app import create_app
from receiver.settings import Settings
from receiver.simulator.provider import SimConfig, Simulator
from tests.conftest import SECRET, Subscriber, free_socket, serve, wait_until

# browser_page stays importable from here too: tests written against this module keep working.
from tests.helpers import browser_page
from tests.helpers import chromium as _chromium

pytestmark = [pytest.mark.anyio, pytest.mark.browser]

TEST_BUDGET = 120.0  # seconds for a whole browser test
TASK_SECONDS = 100.0  # simulated task duration: the test decides when it ends (see Clock)


class Clock:
    """The simulated provider's clock: real time plus an offset the test moves forward, so a
    task stays in progress until the test has seen it on the page."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Service:
    url: str
    client: httpx.AsyncClient
    clock: Clock
    subscriber: Subscriber
    hook: str  # the subscriber's URL

    async def submit(self, prompt: str = "a red fox", headers: dict[str, str] | None = None) -> str:
        body = {"model": "seedance-2.0", "prompt": prompt, "return_last_frame": True}
        response = await self.client.post(f"{self.url}/v1/videos", json=body, headers=headers)
        assert response.status_code == 200, response.text
        video_id: str = response.json()["id"]
        return video_id


@contextlib.asynccontextmanager
async def service(tmp_path: Path, **overrides: Any) -> AsyncIterator[Service]:
    """Receiver + simulated provider + one subscriber, each on its own loopback port."""
    clock = Clock()
    simulator = Simulator(
        SimConfig(secret=SECRET, duration_median=TASK_SECONDS, duration_sigma=0.0), clock=clock
    )
    subscriber = Subscriber()
    sock = free_socket()
    async with serve(simulator.app) as provider_url, serve(subscriber.app) as subscriber_url:
        settings = Settings.from_env(
            {
                "RECEIVER_PORT": str(sock.getsockname()[1]),
                "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path}/receiver.db",
                "RECEIVER_PROVIDER_URL": provider_url,
                "RECEIVER_WEBHOOK_SECRETS": SECRET,
                "RECEIVER_OUTBOUND_ALLOW": "127.0.0.0/8",
            }
        )
        app = create_app(replace(settings, **overrides))
        async with serve(app, sock) as url, httpx.AsyncClient(timeout=10) as client:
            yield Service(url, client, clock, subscriber, f"{subscriber_url}/hook")


def _screenshot_path(tmp_path: Path) -> Path:
    """Where the screenshot goes: RECEIVER_DASHBOARD_SCREENSHOT if set (README's), else tmp."""
    wanted = os.environ.get("RECEIVER_DASHBOARD_SCREENSHOT")
    return Path(wanted) if wanted else tmp_path / "dashboard.png"


@pytest.mark.slow
async def test_task_goes_live_to_completed_and_its_delivery_replays(tmp_path: Path) -> None:
    _chromium()
    from playwright.async_api import expect

    errors: list[str] = []
    with anyio.fail_after(TEST_BUDGET):
        async with (
            contextlib.AsyncExitStack() as stack,
            service(tmp_path) as svc,
            browser_page(errors) as page,
        ):
            # A healthy subscriber and one that fails, so the event has sends and attempts to
            # show and the fan-out health an error.
            failing = Subscriber(answer=lambda n: 503)
            broken_url = await stack.enter_async_context(serve(failing.app))
            subs = {}
            for name, url in (("broken", f"{broken_url}/hook"), ("healthy", svc.hook)):
                created = await svc.client.post(f"{svc.url}/v1/subscriptions", json={"url": url})
                assert created.status_code == 200, created.text
                subs[name] = created.json()["id"]

            shell = await page.goto(svc.url + "/")
            assert shell is not None and shell.status == 200
            assert "default-src 'self'" in (await shell.all_headers())["content-security-policy"]
            await expect(page.locator("#live")).to_have_attribute("data-state", "live")
            await expect(page.locator("#recent-tasks")).to_contain_text("No tasks yet")
            await page.evaluate("window.__sameDocument = true")

            # Submitted through the API; it appears on the open page, not yet finished.
            video_id = await svc.submit()
            for prompt in ("a heron at dawn", "rain on a tin roof"):
                await svc.submit(prompt)
            row = page.locator(f'#recent-tasks tr[data-key="{video_id}"]')
            await expect(row).to_be_visible()
            await expect(row.locator(".pill").first).to_have_text("queued")

            # The provider finishes; the page learns it from the event stream.
            svc.clock.offset = TASK_SECONDS + 1
            await expect(row.locator(".pill").first).to_have_text("completed")
            await expect(row).to_contain_text("webhook")
            await expect(page.locator("#live-events")).to_contain_text(video_id)
            assert await page.evaluate("window.__sameDocument") is True  # never reloaded
            features = (await page.locator('meta[name="receiver-features"]').get_attribute("content")) or ""
            if "health-deliveries" in features.split():  # issue 10: delivery health per model
                await expect(page.locator("#model-health")).to_contain_text("seedance-2.0")
            else:
                await expect(page.locator("#model-health")).to_have_count(0)
            health = page.locator("#fanout-health")
            await expect(health.locator(f'tr[data-key="{subs["healthy"]}"]')).to_contain_text("100%")
            await expect(health.locator(f'tr[data-key="{subs["broken"]}"]')).to_contain_text("answered 503")

            # Open the task: its delivery, verified by a signature, applied; its event delivered.
            await row.get_by_role("link", name=video_id).click()
            await expect(page.locator("h1")).to_contain_text(video_id)
            delivery = page.locator("#task-deliveries details.delivery").first
            await expect(delivery).to_contain_text("applied")
            await expect(delivery).to_contain_text("standard-v1")
            await delivery.locator("summary").click()
            await expect(delivery.locator("pre")).to_contain_text('"status": "completed"')
            sends = page.locator('section[id^="event-evt_"] tr', has_text=subs["healthy"])
            await expect(sends.first).to_contain_text("delivered")
            features = (await page.locator('meta[name="receiver-features"]').get_attribute("content")) or ""
            files = page.locator("#task-files")
            if "video-content" in features.split():  # issue 11: result files kept, the video plays
                await expect(files.locator("tr", has_text="last_frame")).to_contain_text("kept")
                await expect(files.locator("video")).to_be_visible()
            else:  # without it: the provider's links, said to expire
                await expect(files).to_contain_text(f"{video_id}.mp4")
                await expect(files).to_contain_text("does not keep result files")

            # Replay the delivery: a second terminal result is never produced.
            await delivery.get_by_role("button", name="Replay delivery").click()
            result = delivery.locator("[data-result]")
            await expect(result).to_contain_text("Replayed dlv_")
            await expect(result).to_contain_text("duplicate")

            # Replay the event to one subscriber: the page shows the replay's progress.
            event_panel = page.locator('section[id^="event-evt_"]')
            await event_panel.get_by_label("Replay to").select_option(subs["healthy"])
            await event_panel.get_by_role("button", name="Replay event").click()
            await expect(event_panel.locator("[data-result]")).to_contain_text("1 delivered")
            await wait_for(lambda: len(svc.subscriber.received) >= 2, "the replayed event to arrive")

            await expect(event_panel.get_by_label("Replay to")).to_have_value(subs["healthy"])
            await page.evaluate("window.scrollTo(0, 0)")
            await page.screenshot(path=str(_screenshot_path(tmp_path).with_name("dashboard-task.png")))

            # Search by id goes to what the id names: a delivery, a video.
            delivery_id = (await delivery.locator("summary code").first.text_content()) or ""
            for wanted, heading in ((delivery_id, "Delivery"), (video_id, "Task")):
                await page.locator("#search-input").fill(wanted)
                await page.locator("#search-input").press("Enter")
                await expect(page.locator("h1")).to_contain_text(f"{heading} {wanted}")

            # Lists page as the API does: limit, then "Older" with after=<last id>, and back.
            await page.goto(svc.url + "/#/tasks?limit=2")
            rows = page.locator("#tasks tbody tr")
            await expect(rows).to_have_count(2)
            newest = await rows.first.get_attribute("data-key")
            await page.get_by_role("link", name="Older →").click()
            await expect(rows).to_have_count(1)
            await expect(page.get_by_role("link", name="Older →")).to_have_count(0)
            await page.get_by_role("link", name="← Newer").click()
            await expect(rows).to_have_count(2)
            await expect(rows.first).to_have_attribute("data-key", newest or "")

            # Back to the overview for the screenshot README shows.
            await page.get_by_role("link", name="Overview").click()
            await expect(page.locator(f'#recent-tasks tr[data-key="{video_id}"]')).to_be_visible()
            await page.screenshot(path=str(_screenshot_path(tmp_path)))
    assert errors == []


@pytest.mark.slow
async def test_api_key_is_asked_once_and_sent_on_every_call(tmp_path: Path) -> None:
    _chromium()
    from playwright.async_api import expect

    key = "test-dashboard-key"
    errors: list[str] = []
    refused: list[str] = []

    def expected_401(text: str) -> bool:
        # The one wrong key this test types is answered 401; Chromium logs that resource error.
        if "401" in text:
            refused.append(text)
            return True
        return False

    with anyio.fail_after(TEST_BUDGET):
        async with service(tmp_path, api_keys=(key,)) as svc, browser_page(errors, expected_401) as page:
            assert (await svc.client.get(f"{svc.url}/v1/stats")).status_code == 401
            video_id = await svc.submit(headers={"authorization": f"Bearer {key}"})
            calls: list[tuple[str, str | None]] = []
            page.on("request", lambda r: calls.append((r.url, r.headers.get("authorization"))))

            await page.goto(svc.url + "/")  # the shell itself needs no key
            dialog = page.locator("#key-dialog")
            await expect(dialog).to_be_visible()
            assert not [url for url, _ in calls if "/v1/" in url]  # asked before any data call

            await page.locator("#key-input").fill("wrong-key")
            await page.locator("#key-input").press("Enter")
            await expect(page.locator("#key-error")).to_contain_text("refused")
            await expect(dialog).to_be_visible()

            await page.locator("#key-input").fill(key)
            await page.get_by_role("button", name="Use this key").click()
            await expect(dialog).to_be_hidden()
            await expect(page.locator(f'#recent-tasks tr[data-key="{video_id}"]')).to_be_visible()
            await expect(page.locator("#live")).to_have_attribute("data-state", "live")

            # Kept for the tab: moving around asks no more, and the key is never in a URL.
            await page.get_by_role("link", name="Subscriptions").click()
            await expect(page.locator("#subscriptions")).to_contain_text("No subscriptions yet")
            await page.reload()
            await expect(page.locator("#subscriptions")).to_contain_text("No subscriptions yet")
            await expect(dialog).to_be_hidden()
            assert await page.evaluate("sessionStorage.getItem('receiver.apiKey')") == key
            data_calls = [(url, auth) for url, auth in calls if "/v1/" in url]
            assert data_calls and all(key not in url for url, _ in data_calls)
            good = [url for url, auth in data_calls if auth == f"Bearer {key}"]
            assert any("/v1/events/stream" in url for url in good)
            assert {auth for _, auth in data_calls} <= {f"Bearer {key}", "Bearer wrong-key"}
    assert errors == []
    assert refused  # the wrong key really was refused


class Outage:
    """A loopback TCP proxy between the browser and the receiver that the test can cut: every
    connection through it drops at once and new ones are closed on arrival until it is mended."""

    def __init__(self, target: str) -> None:
        self._port = int(target.rsplit(":", 1)[1])
        self._open: set[asyncio.StreamWriter] = set()
        self.down = False
        self.cuts = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            self.cut()
            server.close()
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._open |= {writer, up_writer}

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while chunk := await source.read(65536):
                    sink.write(chunk)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._open -= {writer, up_writer}

    def cut(self) -> None:
        self.down = True
        self.cuts += 1
        for writer in list(self._open):
            writer.transport.abort()

    def mend(self) -> None:
        self.down = False


@pytest.mark.slow
async def test_the_stream_resumes_with_last_event_id_after_a_drop(tmp_path: Path) -> None:
    _chromium()
    from playwright.async_api import expect

    errors: list[str] = []
    dropped: list[str] = []

    def during_outage(text: str) -> bool:
        # Calls made while the network is cut fail; Chromium logs each one (maybe a little later).
        if "net::ERR_" in text and outage.cuts:
            dropped.append(text)
            return True
        return False

    with anyio.fail_after(TEST_BUDGET):
        async with (
            service(tmp_path) as svc,
            (outage := Outage(svc.url)).running() as url,
            browser_page(errors, during_outage) as page,
        ):
            streams: list[str | None] = []

            def on_request(request: Any) -> None:
                if "/v1/events/stream" in request.url:
                    streams.append(request.headers.get("last-event-id"))

            page.on("request", on_request)
            await page.goto(url + "/")
            live = page.locator("#live")
            await expect(live).to_have_attribute("data-state", "live")
            first = await svc.submit()
            svc.clock.offset += TASK_SECONDS + 1
            feed = page.locator("#live-events")
            await expect(feed).to_contain_text(first)
            events = (await svc.client.get(f"{svc.url}/v1/events", params={"video_id": first})).json()
            first_event = events["data"][0]["id"]

            # The connection drops; an event is recorded meanwhile; the page catches up with it.
            outage.cut()
            await expect(live).to_have_attribute("data-state", "reconnecting")
            second = await svc.submit()
            svc.clock.offset += TASK_SECONDS + 1
            await wait_until(lambda: _completed(svc, second), timeout=15, what="the second task to complete")
            outage.mend()
            await expect(live).to_have_attribute("data-state", "live")
            await expect(feed).to_contain_text(second)
            assert streams[0] is None and streams[-1] == first_event
    assert errors == []


async def _completed(svc: Service, video_id: str) -> bool:
    answer = await svc.client.get(f"{svc.url}/v1/videos/{video_id}")
    return bool(answer.json()["status"] == "completed")


async def test_subscriptions_create_pause_resume_delete(tmp_path: Path) -> None:
    _chromium()
    from playwright.async_api import expect

    errors: list[str] = []
    with anyio.fail_after(TEST_BUDGET):
        async with service(tmp_path) as svc, browser_page(errors) as page:
            await page.goto(svc.url + "/#/subscriptions")
            await page.get_by_label("Endpoint URL").fill(svc.hook)
            await page.get_by_role("button", name="Create subscription").click()
            secret_box = page.locator("#new-secret")
            await expect(secret_box).to_contain_text("whsec_")
            listed = (await svc.client.get(f"{svc.url}/v1/subscriptions")).json()["data"]
            assert len(listed) == 1
            sub_id = listed[0]["id"]
            assert listed[0]["events"] == ["video.completed", "video.failed"]
            secret = (await svc.client.get(f"{svc.url}/v1/subscriptions/{sub_id}")).json()["secret"]
            await expect(secret_box.locator("code")).to_have_text(secret)
            await secret_box.get_by_role("button", name="I have stored it").click()
            await expect(secret_box).to_have_count(0)  # shown once

            # Keyboard only: Tab reaches the row's controls, Enter presses them.
            row = page.locator(f'#subscriptions tr[data-key="{sub_id}"]')
            await tab_to(page, "Pause")
            await page.keyboard.press("Enter")
            await expect(row.locator(".pill").first).to_have_text("paused")
            await row.get_by_role("button", name="Resume").click()
            await expect(row.locator(".pill").first).to_have_text("active")
            await row.get_by_role("button", name="Delete").click()
            await row.get_by_role("button", name="Confirm delete").click()
            await expect(row).to_have_count(0)
            assert (await svc.client.get(f"{svc.url}/v1/subscriptions/{sub_id}")).status_code == 404
    assert errors == []


async def test_a_dead_letter_is_sent_again(tmp_path: Path) -> None:
    _chromium()
    from playwright.async_api import expect

    errors: list[str] = []
    failing = Subscriber(answer=lambda n: 500)
    with anyio.fail_after(TEST_BUDGET):
        async with (
            serve(failing.app) as failing_url,
            service(tmp_path, fanout_retry_schedule=(0.1,)) as svc,
            browser_page(errors) as page,
        ):
            hook = f"{failing_url}/hook"
            sub_id = (await svc.client.post(f"{svc.url}/v1/subscriptions", json={"url": hook})).json()["id"]
            video_id = await svc.submit()
            svc.clock.offset = TASK_SECONDS + 1

            async def dead_lettered() -> bool:
                answer = await svc.client.get(f"{svc.url}/v1/dead-letters")
                return bool(answer.json()["data"])

            await wait_until(dead_lettered, timeout=15, what="the send to be dead-lettered")

            await page.goto(svc.url + "/")
            health = page.locator(f'#fanout-health tr[data-key="{sub_id}"]')
            await expect(health).to_contain_text("0.0%")
            await health.get_by_role("link", name="1 dead letters").click()
            row = page.locator("#dead-letters tbody tr").first
            await expect(row).to_contain_text(video_id)
            await expect(row).to_contain_text("answered 500")
            before = len(failing.received)
            await row.get_by_role("button", name="Send again").click()
            await expect(row.locator("[data-result]")).to_contain_text("1 send queued")
            await wait_for(lambda: len(failing.received) > before, "the dead letter to be sent again")
    assert errors == []


async def tab_to(page: Any, label: str, presses: int = 60) -> None:
    """Press Tab until the focused control reads `label` (a bounded number of times)."""
    for _ in range(presses):
        await page.keyboard.press("Tab")
        focused = await page.evaluate("document.activeElement && document.activeElement.textContent.trim()")
        if focused == label:
            return
    raise AssertionError(f"{label!r} is not reachable with Tab")


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(0.05)  # wait-ok: a polling interval inside a deadline, not a sync


async def test_the_last_prune_and_a_pruned_delivery_show(tmp_path: Path) -> None:
    _chromium()
    from playwright.async_api import expect

    from tests.helpers import DAY, a_finished_task, opened

    # A task that ended 40 days ago is in the store before serve starts: its first pass prunes it.
    async with opened(f"sqlite:///{tmp_path}/receiver.db") as (store,):
        await a_finished_task(store, 1, time.time() - 40 * DAY)
        (stored,) = (await store.list_deliveries(None, 10, None)).rows
    errors: list[str] = []
    with anyio.fail_after(TEST_BUDGET):
        async with service(tmp_path) as svc, browser_page(errors) as page:

            async def pruned() -> bool:
                stats = (await svc.client.get(f"{svc.url}/v1/stats")).json()
                return bool(stats["retention"]["last_prune"]["pruned"])

            await wait_until(pruned, timeout=15, what="the first pruning pass")
            await page.goto(svc.url + "/")
            panel = page.locator("#retention")
            await expect(panel).to_contain_text("30 d 0 h after a task ends")
            await expect(panel.locator('tr[data-key="delivery_bodies"]')).to_contain_text("1")
            await expect(panel.locator('tr[data-key="events"]')).to_contain_text("1")
            await page.goto(f"{svc.url}/#/deliveries/{stored.id}")
            await expect(page.locator("#view")).to_contain_text("Pruned: its retention ended")
            await expect(page.get_by_role("button", name="Replay delivery")).to_have_count(0)
    assert errors == []
