"""The SQLite writer: one thread, one connection, batches of writes committed together."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from receiver.errors import StoreError, StoreUnavailable

__all__ = ["Late", "Unit", "Writer"]

log = logging.getLogger("receiver.store")

T = TypeVar("T")
Unit = Callable[[sqlite3.Connection], Any]

_MAX_BATCH = 256
# How long another process may hold the write lock (a backup, `sqlite3` in a shell) before a
# batch gives up, and how long a caller waits for its write before answering "unavailable".
BUSY_TIMEOUT = 2.0
WRITE_TIMEOUT = 5.0


class Late(StoreUnavailable):
    """The write had not begun by its deadline, and never will: nothing was written."""


_QUEUED, _STARTED, _ABANDONED = 0, 1, 2


class _Job:
    __slots__ = ("_lock", "_state", "durable", "future", "unit")

    def __init__(self, unit: Unit, future: asyncio.Future[Any], durable: bool) -> None:
        self.unit = unit
        self.future = future
        self.durable = durable
        # Started (on the writer thread) and abandoned (on the loop, by a caller whose deadline
        # passed) exclude each other: a caller answered 503 leaves nothing behind, and a unit
        # that began is waited for, since its batch may commit.
        self._lock = threading.Lock()
        self._state = _QUEUED

    def begin(self) -> bool:
        """On the writer thread: whether the unit may run (False: its caller has gone)."""
        with self._lock:
            if self._state == _ABANDONED:
                return False
            self._state = _STARTED
            return True

    def abandon(self) -> bool:
        """On the loop: give up on a unit not yet begun (False: it has begun)."""
        with self._lock:
            if self._state == _STARTED:
                return False
            self._state = _ABANDONED
            return True


class Writer:
    """Every statement runs on the writer thread, never on the event loop: a lock held by
    another process delays writes (bounded by BUSY_TIMEOUT, then StoreUnavailable) but never
    reads, /healthz or other requests. One commit (one fsync) covers every write queued while
    the previous one ran."""

    def __init__(self, path: str, prepare: Callable[[sqlite3.Connection], None]) -> None:
        self._path = path
        self._prepare = prepare
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._durable = True  # the connection's synchronous setting: FULL (True) or NORMAL

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._connect)
        self._task = asyncio.create_task(self._loop(), name="store-writer")

    def _connect(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def stop(self) -> None:
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        if self._conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def run(
        self, unit: Callable[[sqlite3.Connection], T], *, deadline: float | None = None, durable: bool = True
    ) -> T:
        """Run `unit` in the next batch's transaction and return what it returned once committed.

        A batch commits with an fsync (synchronous=FULL) when any of its units is `durable`.
        One that is not (the fan-out's own bookkeeping, whose loss only means sending again)
        may commit without one (NORMAL): a crash of the process keeps it, a crash of the
        machine may not. A later durable commit's fsync covers it (the WAL is written in order).

        A unit not begun by `deadline` (loop time; WRITE_TIMEOUT from now by default) is never
        run: Late, nothing written. One that has begun is waited for, however long it takes: its
        batch may commit, and a caller told "unavailable" must find nothing written. A unit raises
        a StoreError only before it writes anything (the batch goes on without it); any other
        exception undoes the batch, which runs again without that unit."""
        if self._task is None or self._task.done():
            raise StoreUnavailable("the store is not open")
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + WRITE_TIMEOUT
        job = _Job(unit, loop.create_future(), durable)
        self._queue.put_nowait(job)
        try:
            result: T = await asyncio.wait_for(asyncio.shield(job.future), max(0.0, deadline - loop.time()))
        except TimeoutError:
            if job.abandon():
                job.future.cancel()  # nobody waits for it now
                raise Late("the store did not take the write in time") from None
            result = await job.future
        return result

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            item = await self._queue.get()
            if item is None:
                break
            batch = [item]
            # No timer: take what queued up while the last commit ran, so an idle store
            # commits at once and a busy one commits many writes per fsync.
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                extra = self._queue.get_nowait()
                if extra is None:
                    stopping = True
                    break
                batch.append(extra)
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except Exception as exc:
                log.error("store commit failed: %s", type(exc).__name__)
                results = [(False, StoreUnavailable("the store could not commit"))] * len(batch)
            for job, (ok, value) in zip(batch, results, strict=True):
                if job.future.done():
                    continue
                if ok:
                    job.future.set_result(value)
                else:
                    job.future.set_exception(value)

    def _run_batch(self, batch: list[_Job]) -> list[tuple[bool, Any]]:
        """On the writer thread: the batch in one transaction. A unit that fails unexpectedly
        rolls the transaction back, and the batch runs again without it (no savepoints on the
        happy path; a failing unit costs the others one re-run, never its error)."""
        conn = self._conn
        assert conn is not None
        failed: dict[int, Exception] = {}
        durable = any(job.durable for job in batch)
        if durable != self._durable:
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        while True:
            results: list[tuple[bool, Any]] = []
            conn.execute("BEGIN IMMEDIATE")
            try:
                for index, job in enumerate(batch):
                    if index in failed:
                        results.append((False, failed[index]))
                        continue
                    if not job.begin():
                        results.append((False, Late("abandoned")))
                        continue
                    try:
                        results.append((True, job.unit(conn)))
                    except StoreError as exc:
                        results.append((False, exc))
                    except sqlite3.OperationalError:
                        raise  # locked, disk full, I/O: the whole batch fails
                    except Exception as exc:
                        log.error("store write failed: %s", type(exc).__name__, exc_info=True)
                        failed[index] = StoreUnavailable("the store could not apply a write")
                        raise _Retry() from exc
                conn.execute("COMMIT")
                return results
            except _Retry:
                conn.execute("ROLLBACK")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise


class _Retry(Exception):
    """One unit failed: roll back and run the batch again without it."""
