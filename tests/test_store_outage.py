"""The store unavailable: every /v1 route answers 503 `store_unavailable` (never a 500), /readyz
503, /healthz 200; and everything answers again once the database is back."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.conftest import StackFactory, wait_until

pytestmark = pytest.mark.anyio

READS = [
    "/v1/videos",
    "/v1/videos/{video}",
    "/v1/videos/{video}/content",
    "/v1/deliveries",
    "/v1/deliveries/dlv_1",
    "/v1/stats",
    "/v1/health/subscribers",
    "/v1/subscriptions",
    "/v1/subscriptions/{sub}",
    "/v1/events",
    "/v1/events/evt_1",
    "/v1/replays/rpl_1",
    "/v1/dead-letters",
]


async def _database(admin: str, name: str, *, allow: bool) -> None:
    conn = await asyncpg.connect(admin, timeout=5)
    try:
        await conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS {'true' if allow else 'false'}")
        if not allow:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
    finally:
        await conn.close()


async def test_every_route_answers_503_while_the_database_is_away(
    make_stack: StackFactory, postgres_url: str, postgres_server: str
) -> None:
    name = urlsplit(postgres_url).path.lstrip("/")
    async with make_stack(database_url=postgres_url) as stack:
        video = (await stack.submit()).json()["id"]
        sub = (
            await stack.client.post(f"{stack.url}/v1/subscriptions", json={"url": "http://127.0.0.1:9/h"})
        ).json()["id"]
        paths = [p.format(video=video, sub=sub) for p in READS]
        await _database(postgres_server, name, allow=False)
        try:
            for path in paths:
                answer = await stack.client.get(f"{stack.url}{path}")
                assert answer.status_code == 503, (path, answer.text)
                assert answer.json()["error"]["code"] == "store_unavailable", path
            for path, body in (
                ("/v1/subscriptions", {"url": "http://127.0.0.1:9/h"}),
                ("/v1/events/replay", {}),
                ("/v1/videos", {"model": "seedance-2.0", "prompt": "not paid for"}),
            ):
                answer = await stack.client.post(f"{stack.url}{path}", json=body)
                assert answer.status_code == 503, (path, answer.text)
                assert answer.json()["error"]["code"] == "store_unavailable", path
            assert list(stack.simulator.tasks) == [video]  # nothing submitted while refused
            assert (await stack.client.get(f"{stack.url}/healthz")).status_code == 200
            assert (await stack.client.get(f"{stack.url}/readyz")).status_code == 503
        finally:
            await _database(postgres_server, name, allow=True)

        async def answering() -> bool:
            return (await stack.client.get(f"{stack.url}/v1/videos/{video}")).status_code == 200

        await wait_until(answering, timeout=30, what="reads to answer again")
        await stack.wait_status(video, "completed", timeout=30)
        await wait_until(lambda: _ready(stack), timeout=30, what="ready again")


async def _ready(stack: Any) -> bool:
    return (await stack.client.get(f"{stack.url}/readyz")).status_code == 200
