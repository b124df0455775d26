"""Helpers several test modules share that are not fixtures: store rows to write, a child
receiver process, a browser page, a subscription made through the API, events seeded in a
store file. (Fixtures and the servers they run are in conftest.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from receiver.rules.records import NewDelivery, NewTask
from receiver.simulator.provider import SimConfig
from store import Store, open_store
from tests.conftest import SECRET, ReceiverProcess, Stack, free_socket, sign_headers

# -- store rows (the contract suite and the backends' own tests) ------------------------------


@contextlib.asynccontextmanager
async def opened(url: str, count: int = 1) -> AsyncIterator[list[Store]]:
    stores = [open_store(url) for _ in range(count)]
    for store in stores:
        await store.open()
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


def new_task(n: int, now: float, **kwargs: Any) -> NewTask:
    fields: dict[str, Any] = {
        "token_hash": f"tok{n}",
        "model": "m",
        "request": {"model": "m", "prompt": f"p{n}"},
        "callback_url": None,
        "idem_scope": None,
        "idem_key": None,
        "request_hash": None,
        "created_at": now,
        "expires_at": None,
    }
    fields.update(kwargs)
    return NewTask(**fields)


async def submitted(store: Store, n: int, now: float, status: str = "queued") -> int:
    created = await store.create_task(new_task(n, now))
    assert created.state == "created" and created.pk is not None
    await store.finish_submit(created.pk, f"vid{n}", status, {"id": f"vid{n}", "model": "m"}, now, now + 60)
    return created.pk


def delivery(n: int, key: str, status: str | None, now: float, **kwargs: Any) -> NewDelivery:
    fields: dict[str, Any] = {
        "dedupe_key": key,
        "route": "task",
        "token_hash": f"tok{n}",
        "video_id": f"vid{n}",
        "verified_by": "standard-v1",
        "headers": {"webhook-id": key},
        "body": b"{}",
        "event_type": None,
        "status": status,
        "video": {"id": f"vid{n}", "status": status} if status else None,
        "actionable": True,
        "needs_confirm": False,
        "received_at": now,
        "next_poll_at": now + 60,
    }
    fields.update(kwargs)
    return NewDelivery(**fields)


# -- a receiver in a child process ----------------------------------------------------------


@contextlib.asynccontextmanager
async def child_receiver(tmp_path: Path, provider_url: str) -> AsyncIterator[ReceiverProcess]:
    """`receiver serve` as a child process (killable) on a SQLite store in `tmp_path`, polling
    fast, submitting to `provider_url`; stopped on the way out. The caller starts it."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    env.update(
        RECEIVER_PORT=str(port),
        RECEIVER_DATABASE_URL=f"sqlite:///{tmp_path}/receiver.db",
        RECEIVER_PROVIDER_URL=provider_url,
        RECEIVER_WEBHOOK_SECRETS=SECRET,
        RECEIVER_POLL_AFTER="1",
        RECEIVER_POLL_MAX_INTERVAL="2",
        RECEIVER_POLL_RATE="1000",
        RECEIVER_POLL_CONCURRENCY="32",
    )
    receiver = ReceiverProcess(env, port, tmp_path)
    try:
        yield receiver
    finally:
        receiver.stop()


# -- a browser page ------------------------------------------------------------------------

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 15_000  # the longest any one wait on the page may take


def chromium() -> str:
    """Chromium's path; skips the test, loudly, when Playwright or Chromium is missing."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("BROWSER TESTS SKIPPED: the playwright package is missing (pip install -e '.[dev]')")
    path = os.environ.get("RECEIVER_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.skip("BROWSER TESTS SKIPPED: no Chromium (apt-get install chromium; RECEIVER_TEST_CHROMIUM)")
    return path


@contextlib.asynccontextmanager
async def browser_page(
    errors: list[str], allow: Callable[[str], bool] = lambda text: False
) -> AsyncIterator[Any]:
    """A fresh Chromium page that records every console error and uncaught page error."""
    from playwright.async_api import async_playwright, expect

    executable = chromium()
    expect.set_options(timeout=WAIT_MS)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=WAIT_MS)
        try:
            context = await browser.new_context(viewport={"width": 1440, "height": 1100})
            context.set_default_timeout(WAIT_MS)
            context.set_default_navigation_timeout(WAIT_MS)
            page = await context.new_page()

            def console(message: Any) -> None:
                if message.type == "error" and not allow(message.text):
                    errors.append(f"console: {message.text}")

            page.on("console", console)
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            yield page
            await context.close()
        finally:
            await browser.close()


DAY = 86_400.0


async def a_finished_task(store: Store, n: int, ended: float, *, copies: int = 1) -> str:
    """A task that completed at `ended` by delivery `msg:n` (plus copies of it); its video id."""
    await submitted(store, n, ended - 100)
    for copy in range(copies):
        await store.record_delivery(delivery(n, f"msg:{n}", "completed", ended + copy))
    return f"vid{n}"


async def subscribe(stack: Any, url: str, **body: Any) -> dict[str, Any]:
    answer = await stack.client.post(f"{stack.url}/v1/subscriptions", json={"url": url, **body})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def seed_events(db: Path, count: int) -> None:
    """Write `count` terminal tasks and their events straight into a fresh store file."""
    now = time.time()
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO tasks (pk, video_id, token_hash, status, model, video, request, created_at,"
            " updated_at, terminal_at, resolved_by) VALUES (?, ?, ?, 'completed', 'm', '{}', '{}', ?, ?, ?,"
            " 'webhook')",
            [(i, f"video_{i}", f"t{i}", now, now, now) for i in range(1, count + 1)],
        )
        conn.executemany(
            "INSERT INTO events (id, task_pk, video_id, type, created_at, data) VALUES (?, ?, ?,"
            " 'video.completed', ?, ?)",
            [
                (f"evt_{i:08d}", i, f"video_{i}", now, json.dumps({"id": f"video_{i}"}))
                for i in range(1, count + 1)
            ],
        )


# Tasks that end in well under a second, about a third of them failed.
FAST = SimConfig(secret=SECRET, duration_median=0.2, duration_sigma=0.2, fail_rate=0.3, seed=5)


SLOW = SimConfig(secret=SECRET, duration_median=3600)  # the provider's own result never comes


async def completed_with(stack: Stack, content: dict[str, str]) -> str:
    """A task the provider has accepted, then a signed delivery saying it completed with
    `content` (the result files' URLs)."""
    video_id = (await stack.submit()).json()["id"]
    body = json.dumps(
        {"id": video_id, "object": "video", "status": "completed", "model": "m", "content": content}
    ).encode()
    answer = await stack.client.post(
        f"{stack.url}/webhooks", content=body, headers=sign_headers(body, msg_id=secrets.token_hex(8))
    )
    assert answer.status_code == 200, answer.text
    return video_id


async def files_of(stack: Stack, video_id: str) -> dict[str, dict[str, Any]]:
    return {f["variant"]: f for f in (await stack.video(video_id))["receiver"]["files"]}
