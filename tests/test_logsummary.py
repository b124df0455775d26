"""Refused deliveries are logged as a summary: one line per cause per interval, with a count."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from receiver.logsummary import LogSummary
from tests.conftest import StackFactory, sign_headers, wait_until

pytestmark = pytest.mark.anyio


def lines(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


async def test_the_first_event_is_logged_at_once_and_the_rest_as_one_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "test.summary")
    summary = LogSummary(logging.getLogger("test.summary"), "deliveries refused", interval=0.2)
    for _ in range(40):
        summary.note("invalid_signature")
    summary.note("store_unavailable")
    assert lines(caplog, "test.summary") == [
        "deliveries refused: 1 invalid_signature",
        "deliveries refused: 1 store_unavailable",
    ]
    await wait_until(lambda: len(lines(caplog, "test.summary")) == 3, timeout=5)
    assert lines(caplog, "test.summary")[2] == "deliveries refused: 39 invalid_signature in the last 0.2 s"
    # Quiet since: the timer is not re-armed, and a new event is logged at once again.
    await wait_until(lambda: not summary._timers, timeout=5)
    summary.note("invalid_signature")
    assert lines(caplog, "test.summary")[-1] == "deliveries refused: 1 invalid_signature"
    summary.close()


async def test_close_logs_what_was_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "test.summary")
    summary = LogSummary(logging.getLogger("test.summary"), "deliveries refused", interval=60)
    for _ in range(3):
        summary.note("unknown_token")
    summary.close()
    assert lines(caplog, "test.summary")[-1] == "deliveries refused: 2 unknown_token before shutdown"


async def test_a_flood_of_refused_deliveries_is_one_line_per_cause(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "receiver.routes.webhooks")
    async with make_stack() as stack:
        body = json.dumps({"id": "video_x", "object": "video", "status": "completed"}).encode()
        bad = {**sign_headers(body), "webhook-signature": "v1,AAAA"}
        answers = await asyncio.gather(
            *(stack.client.post(f"{stack.url}/webhooks", content=body, headers=bad) for _ in range(50)),
            *(stack.client.post(f"{stack.url}/webhooks/{'x' * 40}", content=body) for _ in range(20)),
        )
        assert [a.json()["error"]["code"] for a in answers] == ["invalid_signature"] * 50 + [
            "missing_signature"
        ] * 20
        logged = lines(caplog, "receiver.routes.webhooks")
        assert logged == [
            "deliveries refused: 1 invalid_signature",
            "deliveries refused: 1 missing_signature",
        ], logged
