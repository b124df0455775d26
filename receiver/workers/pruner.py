"""Retention: a pass every RECEIVER_PRUNE_INTERVAL deletes what is past each retention, in small
batches, by the one process that holds the "prune" lease."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from receiver.errors import StoreError
from receiver.media.base import MediaStore
from receiver.media.directory import LocalMedia
from receiver.metrics import Metrics
from receiver.rules import decide
from receiver.rules.records import PruneRun
from receiver.settings import Settings
from store import Store

__all__ = ["RECLAIMED", "Pruner", "add_parser"]

log = logging.getLogger("receiver.workers.pruner")

LEASE_NAME = "prune"
# Seconds a pass holds the lease past its last batch: a process that dies mid-pass leaves it to
# another process this long after. Renewed with every batch, so a long pass keeps it.
LEASE = 60.0
# Tasks (or deliveries naming none, or files) per batch, each batch its own transaction. On
# SQLite a batch is one unit of the writer the ack path uses, so an acknowledgement waits at
# most one batch: a few hundred rows deleted or emptied, milliseconds.
BATCH = 200
# A pass stops after this many batches and goes on at the next interval: bounded work per pass.
MAX_BATCHES = 10_000

Batch = Callable[[], Awaitable[tuple[dict[str, int], bool]]]
# The tables whose rows each count of a pass deleted or rewrote (delivery_bodies: emptied
# deliveries, their tasks marked pruned; files: capture rows marked expired), and count_changes
# where the counting triggers appended a change. Biggest first.
RECLAIMED = (
    "deliveries",
    "tasks",
    "events",
    "outbox",
    "attempts",
    "captures",
    "subscriptions",
    "count_changes",
)
_TABLES = {
    "delivery_bodies": ("deliveries", "tasks"),
    "deliveries": ("deliveries",),
    "events": ("events", "tasks"),
    "outbox": ("outbox", "count_changes"),
    "attempts": ("attempts",),
    "files": ("captures", "count_changes"),
    "captures": ("captures", "count_changes"),
    "subscriptions": ("subscriptions",),
    "tasks": ("tasks", "count_changes"),
}


class Pruner:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        media: MediaStore,
        *,
        clock: Callable[[], float],
        metrics: Metrics | None = None,
        batch: int = BATCH,
        holder: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._settings = settings
        self._media = media
        self._clock = clock
        self._metrics = metrics
        self._batch = batch
        self._holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._monotonic = monotonic
        self.batches = 0  # batches this process has run (tests follow a pass by it)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.prune(stop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._settings.prune_interval)

    def cutoffs(self) -> decide.PruneCutoffs:
        s = self._settings
        return decide.prune_cutoffs(self._clock(), s.retention, s.task_retention, s.media_retention)

    async def preview(self) -> dict[str, int]:
        """What a pass would delete now, by table; nothing is written."""
        c = self.cutoffs()
        return await self._store.prune_preview(c.bodies_before, c.tasks_before, c.files_before)

    async def prune(self, stop: asyncio.Event | None = None) -> dict[str, int] | None:
        """One pass (tests and `receiver prune` call it directly): rows deleted by table, or None
        when another process holds the lease (it is pruning) or the store is unavailable."""
        store = self._store
        started, at = self._monotonic(), self._clock()
        try:
            if not await store.take_lease(LEASE_NAME, self._holder, at, at + LEASE):
                return None
        except StoreError as exc:
            log.warning("pruner: store unavailable (%s)", type(exc).__name__)
            return None
        counts: dict[str, int] = {}
        complete = False
        try:
            complete = await self._pass(self.cutoffs(), counts, stop)
            if counts and not (stop is not None and stop.is_set()):
                await self._reclaim(counts)
        except StoreError as exc:
            log.warning("pruner: store unavailable (%s); the pass goes on later", type(exc).__name__)
        finally:
            took = self._monotonic() - started
            run = PruneRun(at, took, dict(sorted(counts.items()))) if complete else None
            with contextlib.suppress(StoreError):
                await store.release_lease(LEASE_NAME, self._holder, run)
            if self._metrics is not None:
                self._metrics.pruned(counts)
        if counts:
            log.info("pruned %s", ", ".join(f"{n} {table}" for table, n in sorted(counts.items())))
        return counts

    async def _pass(self, c: decide.PruneCutoffs, counts: dict[str, int], stop: asyncio.Event | None) -> bool:
        """Files first (a task's rows go only once its files are gone), then bodies, then tasks.
        False when the pass stopped early (lease lost, stopping, or its batch budget spent)."""
        store = self._store
        files = c.files_before is not None or c.tasks_before is not None
        if files and not await self._batches(lambda: self._expire_files(c), counts, stop):
            return False
        if not await self._batches(
            lambda: store.prune_bodies(c.bodies_before, self._clock(), self._batch), counts, stop
        ):
            return False
        if c.tasks_before is not None:
            tasks_before = c.tasks_before
            return await self._batches(lambda: store.prune_tasks(tasks_before, self._batch), counts, stop)
        return True

    async def _batches(self, batch: Batch, counts: dict[str, int], stop: asyncio.Event | None) -> bool:
        while True:
            if stop is not None and stop.is_set():
                return False
            if self.batches >= MAX_BATCHES:
                self.batches = 0
                return False
            now = self._clock()
            if not await self._store.take_lease(LEASE_NAME, self._holder, now, now + LEASE):
                log.warning("pruner: lost the prune lease mid-pass; another process goes on")
                return False
            done, more = await batch()
            self.batches += 1
            for table, n in done.items():
                if n:
                    counts[table] = counts.get(table, 0) + n
            if not more:
                return True
            # A turn of the loop between batches: whatever queued meanwhile (on SQLite, the
            # acknowledgements waiting for the writer) goes before the next batch.
            await asyncio.sleep(0)

    async def _reclaim(self, counts: dict[str, int]) -> None:
        """After a pass that deleted rows: the store makes their space reusable (on PostgreSQL a
        VACUUM of each table touched, which no write waits on), still under the lease, so one
        process of a fleet does it. The lease is renewed before each table."""
        touched = {table for key in counts for table in _TABLES.get(key, ())}
        for table in (t for t in RECLAIMED if t in touched):
            now = self._clock()
            if not await self._store.take_lease(LEASE_NAME, self._holder, now, now + LEASE):
                return
            started = self._monotonic()
            await self._store.reclaim(table)
            log.debug("pruner: reclaimed %s in %.3f s", table, self._monotonic() - started)

    async def _expire_files(self, c: decide.PruneCutoffs) -> tuple[dict[str, int], bool]:
        due = await self._store.expiring_files(c.files_before, c.tasks_before, self._batch)
        gone: list[int] = []
        for row in due:
            if row.key is None:
                gone.append(row.pk)
                continue
            try:
                await self._media.delete(row.key)
            except (OSError, ValueError) as exc:
                log.warning("pruner: could not delete a kept file (%s); next pass", type(exc).__name__)
                continue
            gone.append(row.pk)
        expired = await self._store.expire_files(gone)
        # A file that could not be deleted is met again next pass, not in a loop now.
        return {"files": expired}, len(due) == self._batch and expired > 0


async def _prune_once(settings: Settings, dry_run: bool) -> dict[str, int] | None:
    from store import open_store

    store = open_store(settings.database_url)
    await store.open()
    try:
        pruner = Pruner(store, settings, LocalMedia(Path(settings.media_path())), clock=time.time)
        return await (pruner.preview() if dry_run else pruner.prune())
    finally:
        await store.close()


def _run(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(dict(os.environ))
    except ValueError as exc:
        print(f"receiver prune: {exc}", file=sys.stderr)
        return 2
    try:
        counts = asyncio.run(_prune_once(settings, args.dry_run))
    except StoreError as exc:
        print(f"receiver prune: {exc}", file=sys.stderr)
        return 1
    if counts is None:
        print("receiver prune: another process is pruning now (it holds the prune lease)", file=sys.stderr)
        return 1
    print(json.dumps({"dry_run": args.dry_run, "pruned": dict(sorted(counts.items()))}))
    return 0


def add_parser(commands: Any) -> None:
    command = commands.add_parser(
        "prune",
        help="run one pruning pass now, or show what it would delete (--dry-run)",
        description="Delete what is past RECEIVER_RETENTION, RECEIVER_TASK_RETENTION and "
        "RECEIVER_MEDIA_RETENTION, as serve does every RECEIVER_PRUNE_INTERVAL; prints rows by table.",
    )
    command.add_argument(
        "--dry-run", action="store_true", help="count what a pass would delete, by table; delete nothing"
    )
    command.set_defaults(run=_run)
