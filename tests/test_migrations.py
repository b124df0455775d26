"""A database made by every earlier release opens, keeps its rows, and takes new writes."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from receiver.rules.records import NewDelivery, NewTask
from store import Store
from store.sqlite import SQLiteStore
from store.sqlite.migrations import steps
from tests.conftest import wait_until

pytestmark = pytest.mark.anyio

SCHEMAS = sorted((Path(__file__).parent / "schemas").glob("*.sql"))


def make_old_database(path: Path, schema: Path) -> None:
    """What that release did on first start: its migrations, then a task with one delivery."""
    text = schema.read_text("utf-8")
    parts = [p for p in re.split(r"^-- migration \d+:.*$", text, flags=re.M) if p.strip()]
    conn = sqlite3.connect(path)
    for number, part in enumerate(parts, start=1):
        conn.executescript(f"BEGIN;\n{part}\nPRAGMA user_version = {number};\nCOMMIT;")
    now = time.time()
    conn.execute(
        "INSERT INTO tasks (pk, video_id, token_hash, status, model, video, request, created_at, updated_at,"
        " next_poll_at) VALUES (1, 'video_old', 'tok_old', 'queued', 'm', '{}', '{}', ?, ?, ?)",
        (now, now, now + 60),
    )
    columns = [row[1] for row in conn.execute("PRAGMA table_info(deliveries)")]
    values = {
        "dedupe_key": "msg:old",
        "task_pk": 1,
        "video_id": "video_old",
        "route": "task",
        "verified_by": "standard-v1",
        "headers": "{}",
        "body": b'{"id": "video_old", "status": "queued"}',
        "status": "queued",
        "outcome": "applied",
        "received_at": now,
        "last_seen_at": now,
    }
    if "id" in columns:
        values["id"] = "dlv_old"
    conn.execute(
        f"INSERT INTO deliveries ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
        tuple(values.values()),
    )
    conn.commit()
    conn.close()


def delivery(key: str, status: str, now: float) -> NewDelivery:
    return NewDelivery(
        dedupe_key=key,
        route="task",
        token_hash="tok_old",
        video_id="video_old",
        verified_by="standard-v1",
        headers={},
        body=b"{}",
        event_type=None,
        status=status,
        video={"id": "video_old", "status": status},
        actionable=True,
        needs_confirm=False,
        received_at=now,
        next_poll_at=now + 60,
    )


def test_every_earlier_schema_is_kept() -> None:
    assert [p.name for p in SCHEMAS] == [
        "1-first-release.sql",
        "2-poll-schedule.sql",
        "3-fan-out.sql",
        "4-derived-counts.sql",
    ]
    current = (Path(__file__).parents[1] / "store" / "sqlite" / "schema.sql").read_text("utf-8")
    # The newest release's migrations are this release's first steps, unedited.
    assert current == SCHEMAS[-1].read_text("utf-8")


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda p: p.stem)
async def test_a_database_from_an_earlier_release_opens_and_works(tmp_path: Path, schema: Path) -> None:
    db = tmp_path / "old.db"
    make_old_database(db, schema)
    store = SQLiteStore(str(db))
    await store.open()
    try:
        now = time.time()
        old = await store.task_by_video("video_old")
        assert old is not None and old.status == "queued" and old.deliveries == 1
        # The kept counts start from the rows the migration found.
        assert (await store.task_stats()).by_state == {("queued", None): 1}
        result = await store.record_delivery(delivery("msg:new", "completed", now))
        assert (result.outcome, result.duplicate, result.terminal) == ("applied", False, True)
        again = await store.record_delivery(delivery("msg:new", "completed", now))
        assert again.duplicate and again.id == result.id
        task = await store.task_by_video("video_old")
        assert task is not None
        counts = (task.status, task.resolved_by, task.deliveries, task.duplicates)
        assert counts == ("completed", "webhook", 3, 1)
        assert (await store.task_stats()).by_state == {("completed", "webhook"): 1}
        page = await store.list_deliveries("video_old", 10, None)
        assert [r.dedupe_key for r in page.rows] == ["msg:new", "msg:old"]
        events = await store.list_events("video_old", None, 10, None)
        assert len(events.rows) == 1
        created = await store.create_task(
            NewTask("tok_new", "m", {"model": "m"}, None, None, None, None, now, None)
        )
        assert created.state == "created"
    finally:
        await store.close()
    version = sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0]
    assert version == len(steps())


def workspace_copy(key: str, video_id: str, now: float) -> NewDelivery:
    return NewDelivery(
        dedupe_key=key,
        route="workspace",
        token_hash=None,
        video_id=video_id,
        verified_by="standard-v1",
        headers={},
        body=b"{}",
        event_type=None,
        status="queued",
        video={"id": video_id, "status": "queued"},
        actionable=True,
        needs_confirm=False,
        received_at=now,
        next_poll_at=now + 60,
        key_id="any-secret",  # which one verified the kept copy was not recorded then
    )


async def _copies_still_repeat(store: Any, now: float) -> None:
    """Copies of the deliveries kept before keys were scoped (a per-task one, "msg:old", and a
    workspace one, "msg:ws") are duplicates of them; the same ids for another video are not."""
    task_copy = await store.record_delivery(delivery("msg:old", "queued", now))
    assert task_copy.duplicate and task_copy.id == "dlv_1"
    ws_copy = await store.record_delivery(workspace_copy("msg:ws", "video_old", now))
    assert ws_copy.duplicate and ws_copy.id == "dlv_2"
    other = await store.record_delivery(workspace_copy("msg:ws", "video_other", now))
    assert not other.duplicate and other.outcome == "unmatched"
    task = await store.task_by_video("video_old")
    assert task is not None and (task.deliveries, task.duplicates) == (4, 2)  # copies included

    async def shown_as_received() -> bool:
        page = await store.list_deliveries("video_old", 10, None)
        return sorted(r.dedupe_key for r in page.rows) == ["msg:old", "msg:ws"]

    # (On PostgreSQL a list shows rows once every older transaction on the server has ended.)
    await wait_until(shown_as_received, what="the kept keys, shown as the provider sent them")


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda p: p.stem)
async def test_a_delivery_kept_before_keys_were_scoped_is_still_repeated(
    tmp_path: Path, schema: Path
) -> None:
    db = tmp_path / "old.db"
    make_old_database(db, schema)
    now = time.time()
    conn = sqlite3.connect(db)
    values: dict[str, Any] = {
        "pk": 2,
        "dedupe_key": "msg:ws",
        "task_pk": 1,
        "video_id": "video_old",
        "route": "workspace",
        "verified_by": "standard-v1",
        "headers": "{}",
        "body": b"{}",
        "status": "queued",
        "outcome": "applied",
        "received_at": now,
        "last_seen_at": now,
    }
    if "id" in {row[1] for row in conn.execute("PRAGMA table_info(deliveries)")}:
        values["id"] = "dlv_ws"
    conn.execute(
        f"INSERT INTO deliveries ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
        tuple(values.values()),
    )
    conn.commit()
    conn.close()
    store = SQLiteStore(str(db))
    await store.open()
    try:
        await _copies_still_repeat(store, now)
    finally:
        await store.close()


async def test_a_postgres_delivery_kept_before_keys_were_scoped_is_still_repeated(postgres_url: str) -> None:
    import asyncpg

    from store import open_store
    from store.postgres.base import _steps

    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(
            "CREATE TABLE receiver_migrations"
            " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for number, script in enumerate(_steps()[:4], start=1):  # the last step before scoping
            await conn.execute(script)
            await conn.execute("INSERT INTO receiver_migrations (version) VALUES ($1)", number)
        now = time.time()
        pk = await conn.fetchval(
            "INSERT INTO tasks (video_id, token_hash, status, model, video, request, created_at,"
            " updated_at, next_poll_at) VALUES ('video_old', 'tok_old', 'queued', 'm', '{}', '{}',"
            " $1, $1, $2) RETURNING pk",
            now,
            now + 60,
        )
        for key, route in (("msg:old", "task"), ("msg:ws", "workspace")):
            await conn.execute(
                "INSERT INTO deliveries (dedupe_key, task_pk, video_id, route, verified_by, headers, body,"
                " status, outcome, received_at, last_seen_at) VALUES ($1, $2, 'video_old', $3,"
                " 'standard-v1', '{}', '\\x7b7d', 'queued', 'applied', $4, $4)",
                key,
                pk,
                route,
                now,
            )
    finally:
        await conn.close()
    store = open_store(postgres_url)
    await store.open()
    try:
        await _copies_still_repeat(store, now)
    finally:
        await store.close()


async def test_a_postgres_database_of_every_earlier_step_opens_and_works(postgres_url: str) -> None:
    """A PostgreSQL database left at each earlier migration, with a task and its delivery,
    takes the rest on start and keeps working (migration 4 drops the deliveries' foreign key)."""
    import asyncpg

    from store import open_store
    from store.postgres.base import _steps

    total = len(_steps())
    for done in range(1, total):
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
            await conn.execute(
                "CREATE TABLE receiver_migrations"
                " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for number, script in enumerate(_steps()[:done], start=1):
                await conn.execute(script)
                await conn.execute("INSERT INTO receiver_migrations (version) VALUES ($1)", number)
            now = time.time()
            pk = await conn.fetchval(
                "INSERT INTO tasks (video_id, token_hash, status, model, video, request, created_at,"
                " updated_at, next_poll_at) VALUES ('video_old', 'tok_old', 'queued', 'm', '{}', '{}',"
                " $1, $1, $2) RETURNING pk",
                now,
                now + 60,
            )
            await conn.execute(
                "INSERT INTO deliveries (dedupe_key, task_pk, video_id, route, verified_by, headers, body,"
                " status, outcome, received_at, last_seen_at) VALUES ('msg:old', $1, 'video_old', 'task',"
                " 'standard-v1', '{}', '\\x00', 'queued', 'applied', $2, $2)",
                pk,
                now,
            )
        finally:
            await conn.close()
        store = open_store(postgres_url)
        await store.open()
        try:
            assert (await store.task_stats()).by_state == {("queued", None): 1}, done
            result = await store.record_delivery(delivery("msg:new", "completed", now))
            assert (result.outcome, result.terminal) == ("applied", True), done
            assert (await store.task_stats()).by_state == {("completed", "webhook"): 1}, done
            task = await store.task_by_video("video_old")
            assert task is not None and (task.status, task.deliveries) == ("completed", 2), done

            async def both_listed(store: Store = store) -> bool:
                # Lists read behind the visibility horizon: a row just written may show a moment later.
                page = await store.list_deliveries("video_old", 10, None)
                return [r.dedupe_key for r in page.rows] == ["msg:new", "msg:old"]

            await wait_until(both_listed, timeout=10, what=f"both deliveries listed after step {done}")
        finally:
            await store.close()
        conn = await asyncpg.connect(postgres_url)
        try:
            assert await conn.fetchval("SELECT max(version) FROM receiver_migrations") == total
            keys = (
                "SELECT count(*) FROM pg_constraint WHERE conrelid = 'deliveries'::regclass AND contype = 'f'"
            )
            assert await conn.fetchval(keys) == 0, done  # the per-delivery check is gone
        finally:
            await conn.close()
