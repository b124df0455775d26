"""Helpers several test modules share that are not fixtures: store rows to write, a child
receiver process, a browser page. (Fixtures and the servers they run are in conftest.py.)"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from receiver.rules.records import NewDelivery, NewTask
from store import Store, open_store
from tests.conftest import SECRET, ReceiverProcess, free_socket

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
