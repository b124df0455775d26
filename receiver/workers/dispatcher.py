"""Outbox dispatcher: signed sends to subscribers, retries over hours, dead letters."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable

import orjson

from receiver.context import Context
from receiver.errors import StoreError
from receiver.outbound.destinations import Destinations, Message, Outcome
from receiver.rules.congestion import Congestion, Signal
from receiver.rules.records import Attempt, EventRow, OutboxJob
from receiver.rules.redact import strip_callbacks
from receiver.rules.signatures import parse_key, sign_v1

__all__ = ["Dispatcher", "event_body"]

log = logging.getLogger("receiver.workers.dispatcher")

LEASE_MARGIN = 10.0  # a claimed send is due again this long after its timeout if it never lands


def event_body(event: EventRow) -> bytes:
    """The bytes of an event: the same on every attempt and every replay."""
    body = {
        "id": event.id,
        "object": "event",
        "type": event.type,
        "created_at": int(event.created_at),
        "data": strip_callbacks(event.data),
    }
    return orjson.dumps(body)


def signal_of(outcome: Outcome) -> Signal:
    """What an attempt that reached out says of the destination's capacity: a broker's confirm is
    an answer; no answer at all (no HTTP status, no confirm) is unreachable."""
    status = outcome.status
    if outcome.confirmed:
        return Signal.ANSWERED
    if status is None:
        return Signal.UNREACHABLE
    if status >= 500 or status in (408, 429):
        return Signal.OVERLOADED
    return Signal.ANSWERED


class Dispatcher:
    """Sends outbox rows with a global limit and a per-subscriber one that adapts (congestion),
    to whatever kind of destination each subscription names."""

    def __init__(
        self,
        ctx: Context,
        destinations: Destinations,
        *,
        concurrency: int,
        per_subscriber: int,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctx = ctx
        self._destinations = destinations
        self._limit = concurrency
        self._per_subscriber = per_subscriber
        self.congestion = Congestion(
            start=per_subscriber, ceiling=concurrency, timeout=float(ctx.settings.fanout_timeout)
        )
        self._sending: dict[int, int] = {}  # subscription pk -> this process's sends in flight
        self._rng = rng or random.Random()
        self._monotonic = monotonic
        self._keys: dict[str, bytes] = {}  # decoded subscriber secrets, by their stored form
        self._urls: dict[str, str] = {}  # broker URLs with their passwords opened, by stored form
        self._running: set[asyncio.Task[None]] = set()
        self._finished = asyncio.Event()
        settings = ctx.settings
        self._lease = settings.fanout_timeout + LEASE_MARGIN
        self._callback_key = (
            parse_key(settings.callback_secret).material if settings.callback_secret else None
        )

    async def run(self, stop: asyncio.Event) -> None:
        wakeup = self._ctx.fanout_wakeup
        while not stop.is_set():
            wakeup.clear()
            self._finished.clear()
            await self._destinations.sweep()
            room = self._limit - len(self._running)
            claimed = 0
            if room > 0:
                try:
                    claimed = self._spawn(await self._claim(room))
                except StoreError as exc:
                    self._ctx.writes.failed()
                    log.warning("dispatcher: store unavailable (%s)", type(exc).__name__)
            if room > 0 and claimed == room:
                continue
            delay = 5.0
            try:
                due = await self._ctx.store.next_outbox_due()
            except StoreError:
                due = None
            if due is not None:
                delay = min(delay, max(0.0, due - self._ctx.clock()))
            waiters = [asyncio.ensure_future(e.wait()) for e in (wakeup, stop, self._finished)]
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        if self._running:
            await asyncio.wait(self._running)

    async def run_until_idle(self) -> None:
        """Send until nothing is due and nothing is in flight (tests drive it this way)."""
        while True:
            self._finished.clear()
            claimed = self._spawn(await self._claim(max(1, self._limit - len(self._running))))
            if not claimed and not self._running:
                return
            if not claimed:
                await self._finished.wait()

    async def _claim(self, room: int) -> list[OutboxJob]:
        self.congestion.forget_idle(self._monotonic())
        return await self._ctx.store.claim_outbox(
            self._ctx.clock(), room, self.congestion.caps(), self.congestion.start, self._lease
        )

    def _spawn(self, jobs: list[OutboxJob]) -> int:
        for job in jobs:
            key = job.subscription.pk
            self._sending[key] = self._sending.get(key, 0) + 1
            sending = asyncio.create_task(self._deliver(job))
            self._running.add(sending)
            sending.add_done_callback(functools.partial(self._done, key=key))
        return len(jobs)

    def _done(self, task: asyncio.Task[None], key: int) -> None:
        self._running.discard(task)
        self._sending[key] -= 1
        if not self._sending[key]:
            del self._sending[key]
        self._finished.set()

    def _signing_key(self, job: OutboxJob) -> bytes | None:
        secret = job.subscription.secret
        if not secret:
            return self._callback_key
        key = self._keys.get(secret)
        if key is None:
            key = self._keys[secret] = parse_key(self._ctx.secrets.open_secret(secret)).material
        return key

    def _url(self, job: OutboxJob) -> str:
        stored = job.subscription.url
        url = self._urls.get(stored)
        if url is None:
            url = self._urls[stored] = self._ctx.secrets.open_url(stored)
        return url

    async def _deliver(self, job: OutboxJob) -> None:
        ctx = self._ctx
        key = self._signing_key(job)
        started = self._monotonic()
        if key is None:
            outcome = Outcome(False, error="RECEIVER_CALLBACK_SECRET is unset: cannot sign", reached=False)
        else:
            body = event_body(job.event)
            timestamp = str(int(ctx.clock()))
            message = Message(
                job.event.id, job.event.type, body, timestamp, sign_v1(key, job.event.id, timestamp, body)
            )
            outcome = await self._destinations.publish(self._url(job), message)
        ended = self._monotonic()
        if outcome.reached:
            self.congestion.record(
                job.subscription.pk,
                signal_of(outcome),
                started=started,
                now=ended,
                latency=ended - started,
                in_flight=self._sending.get(job.subscription.pk, 1),
            )
        latency_ms = (ended - started) * 1000
        attempt = self._judge(job, outcome, latency_ms)
        ctx.metrics.fanout.labels(outcome=attempt.outcome).inc()
        try:
            await ctx.store.record_attempt(attempt)
        except StoreError as exc:
            ctx.writes.failed()
            # The lease runs out and the send is attempted again: at least once, same webhook-id.
            log.warning("dispatcher: could not record an attempt (%s)", type(exc).__name__)

    def _judge(self, job: OutboxJob, outcome: Outcome, latency_ms: float) -> Attempt:
        now = self._ctx.clock()
        status, error, retry_after = outcome.status, outcome.error, outcome.retry_after
        if outcome.confirmed:
            return Attempt(job.pk, now, status, latency_ms, None, "delivered")
        if status == 410:
            return Attempt(
                job.pk,
                now,
                status,
                latency_ms,
                "410 Gone: subscription disabled",
                "failed",
                disable_subscription=True,
            )
        if status is not None and 400 <= status < 500 and status not in (408, 425, 429):
            return Attempt(job.pk, now, status, latency_ms, f"answered {status}: not retried", "failed")
        if error is None:
            error = f"answered {status}" + (
                " (redirects are not followed)" if 300 <= (status or 0) < 400 else ""
            )
        schedule = self._ctx.settings.fanout_retry_schedule
        attempts = job.attempts + 1
        if attempts > len(schedule):
            return Attempt(job.pk, now, status, latency_ms, error, "dead")
        delay = schedule[attempts - 1] * self._rng.uniform(0.8, 1.2)
        if retry_after is not None and status in (429, 503):
            delay = max(delay, retry_after)
        return Attempt(job.pk, now, status, latency_ms, error, "retry", next_attempt_at=now + delay)
