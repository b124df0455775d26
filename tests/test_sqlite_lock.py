"""Another process holding the SQLite write lock delays writes (then 503) but never reads or health."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.conftest import StackFactory, sign_headers

pytestmark = pytest.mark.anyio


async def test_a_locked_file_blocks_only_writes(make_stack: StackFactory, tmp_path: Path) -> None:
    async with make_stack() as stack:
        video = (await stack.submit()).json()
        holder = sqlite3.connect(tmp_path / "receiver.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # a backup, or `sqlite3` in a shell, holding the lock
        try:
            # Reads and health answer at once (the client's 1 s budget is far below the lock wait).
            quick = httpx.Timeout(1.0)
            assert (await stack.client.get(f"{stack.url}/healthz", timeout=quick)).status_code == 200
            read = await stack.client.get(f"{stack.url}/v1/videos/{video['id']}", timeout=quick)
            assert read.status_code == 200
            body = json.dumps({"id": "video_elsewhere", "object": "video", "status": "completed"}).encode()
            answer = await stack.client.post(
                f"{stack.url}/webhooks",
                content=body,
                headers=sign_headers(body, msg_id="msg_locked"),
                timeout=httpx.Timeout(15.0),
            )
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "store_unavailable"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # The provider's retry is taken once the lock is gone, and nothing was kept twice.
        again = await stack.client.post(
            f"{stack.url}/webhooks", content=body, headers=sign_headers(body, msg_id="msg_locked")
        )
        assert again.status_code == 200 and again.json()["duplicate"] is False
