"""Due-task loop: fetch the results whose deliveries never came, confirm thin ones, end stale tasks."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from receiver.context import Context
from receiver.errors import StoreError
from receiver.outbound.provider import ProviderError
from receiver.rules.payloads import PayloadError, normalise_status
from receiver.rules.records import TaskRow
from receiver.rules.redact import find_token, strip_callbacks

__all__ = ["Poller"]

log = logging.getLogger("receiver.workers.poller")

# A claimed task is due again this long after its GET would have timed out, if its poll never
# lands (the process died): then another process (or this one, restarted) takes it over.
LEASE_MARGIN = 15.0
NOT_FOUND_CONFIRMATIONS = 3  # consecutive 404s before a task is failed as not_found


class Poller:
    """Polls due tasks with bounded concurrency and a requests-per-second budget.

    Every schedule lives in the store (tasks.next_poll_at), so a restart resumes it.
    """

    def __init__(self, ctx: Context, *, concurrency: int, rate: float) -> None:
        self._ctx = ctx
        self._limit = concurrency
        self._concurrency = asyncio.Semaphore(concurrency)
        self._batch = concurrency
        self._spacing = 1.0 / rate if rate > 0 else 0.0
        self._next_start = 0.0
        self._in_flight: set[int] = set()  # task pks being polled right now
        self._idle = asyncio.Event()  # set whenever no poll is in flight
        self._idle.set()
        self._lease = ctx.settings.provider_timeout + LEASE_MARGIN

    async def run(self, stop: asyncio.Event) -> None:
        """Claim due tasks whenever there is room, poll each in its own task, and sleep until
        the next one is due, a poll finishes, or something new is scheduled (wakeup)."""
        wakeup = self._ctx.poll_wakeup
        running: set[asyncio.Task[None]] = set()
        finished = asyncio.Event()

        def done(task: asyncio.Task[None]) -> None:
            running.discard(task)
            finished.set()

        while not stop.is_set():
            # Cleared before looking, so a wake-up or a finish while we look is never missed.
            wakeup.clear()
            finished.clear()
            room = self._limit - len(running)
            claimed: list[TaskRow] = []
            if room > 0:
                try:
                    claimed = await self._ctx.store.claim_due(self._ctx.clock(), room, self._lease)
                except StoreError as exc:
                    self._ctx.writes.failed()
                    log.warning("poller: store unavailable (%s)", type(exc).__name__)
                for task in claimed:
                    if task.pk not in self._in_flight:
                        polling = asyncio.create_task(self._guarded(task))
                        running.add(polling)
                        polling.add_done_callback(done)
            if room > 0 and len(claimed) == room:
                continue  # perhaps more is due: claim again as soon as there is room
            delay = 5.0
            if room > 0:
                try:
                    due = await self._ctx.store.next_due()
                except StoreError:
                    due = None
                if due is not None:
                    delay = min(delay, max(0.0, due - self._ctx.clock()))
            waiters = [asyncio.ensure_future(e.wait()) for e in (wakeup, stop, finished)]
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        if running:
            await asyncio.wait(running)

    async def run_until_idle(self) -> int:
        """Poll until nothing is due (tests use this instead of waiting on timers)."""
        total = 0
        while True:
            handled = await self.run_once()
            total += handled
            if not handled:
                if not self._in_flight:
                    return total
                await self._idle.wait()  # another loop's polls: let them land first

    async def run_once(self) -> int:
        due = await self._ctx.store.claim_due(self._ctx.clock(), self._batch, self._lease)
        tasks = [task for task in due if task.pk not in self._in_flight]
        if tasks:
            await asyncio.gather(*(self._guarded(task) for task in tasks))
        return len(tasks)

    async def _guarded(self, task: TaskRow) -> None:
        # One poll per task at a time, even when run_until_idle and run overlap.
        self._in_flight.add(task.pk)
        self._idle.clear()
        try:
            async with self._concurrency:
                await self._pace()
                await self.poll(task)
        except StoreError as exc:
            self._ctx.writes.failed()
            log.warning("poller: could not record poll of %s (%s)", task.video_id, type(exc).__name__)
        finally:
            self._in_flight.discard(task.pk)
            if not self._in_flight:
                self._idle.set()

    async def _pace(self) -> None:
        """Keep GETs at or under the configured rate, so polling never hammers the provider."""
        if not self._spacing:
            return
        now = time.monotonic()
        start = max(now, self._next_start)
        self._next_start = start + self._spacing
        if start > now:
            await asyncio.sleep(start - now)

    async def poll(self, task: TaskRow) -> None:
        ctx = self._ctx
        scheduler = ctx.scheduler
        assert task.video_id is not None
        past_deadline = ctx.clock() >= scheduler.deadline(task)
        try:
            answer = await ctx.provider.retrieve(task.video_id)
            status = normalise_status(answer.get("status"))
        except ProviderError as exc:
            ctx.metrics.polls.labels(result=_failure_label(exc)).inc()
            await self._failed_poll(task, exc, past_deadline)
            return
        except PayloadError:
            ctx.metrics.polls.labels(result="unusable").inc()
            await self._failed_poll(task, ProviderError("unusable answer", status=200), past_deadline)
            return
        ctx.metrics.polls.labels(result=status).inc()
        now = ctx.clock()
        video: dict[str, Any] = {k: v for k, v in answer.items() if k not in ("object", "callback_url")}
        # Stored without our callback token, even quoted bare (a delivery's is stripped at ingest).
        token = find_token(video, task.token_hash) if task.token_hash else None
        video = strip_callbacks(video, (token,) if token else ())
        if status not in ("completed", "failed") and past_deadline:
            await self._expire(task, now)
            return
        next_at = await scheduler.next_poll_at(task, now)
        after = await ctx.store.record_poll(task.pk, status, video, now, next_at)
        if after.status != task.status and after.terminal_at is not None:
            ctx.terminal_recorded()

    async def _failed_poll(self, task: TaskRow, exc: ProviderError, past_deadline: bool) -> None:
        ctx = self._ctx
        now = ctx.clock()
        if past_deadline:
            await self._expire(task, now)
            return
        if exc.status == 404 and task.poll_failures + 1 >= NOT_FOUND_CONFIRMATIONS:
            error = {"code": "not_found", "message": "the provider no longer knows this video"}
            await ctx.store.record_poll(task.pk, "failed", {"error": error}, now, None)
            ctx.terminal_recorded()
            return
        next_at = ctx.scheduler.retry_at(task, now, exc.retry_after)
        if exc.status == 404:
            # A provider can answer 404 for a moment after creating a task: confirm slowly.
            next_at = max(next_at, min(now + ctx.settings.poll_after, ctx.scheduler.deadline(task)))
        await ctx.store.record_poll(task.pk, None, None, now, next_at, failed=True)

    async def _expire(self, task: TaskRow, now: float) -> None:
        error = {"code": "expired", "message": "no result before the task's deadline"}
        await self._ctx.store.record_poll(
            task.pk, "failed", {"error": error}, now, None, resolved_by="deadline"
        )
        self._ctx.terminal_recorded()


def _failure_label(exc: ProviderError) -> str:
    if exc.timeout:
        return "timeout"
    if exc.status is None:
        return "unreachable"
    if exc.status == 429:
        return "throttled"
    if exc.status == 404:
        return "not_found"
    return "error"
