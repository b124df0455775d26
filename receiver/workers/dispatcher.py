"""Outbox dispatcher: signed sends to subscribers, retries over hours, dead letters."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import orjson

from receiver.context import Context
from receiver.errors import StoreError
from receiver.outbound.destinations import BROKER_SCHEMES, Destinations, Message, Outcome
from receiver.rules.congestion import Congestion, Signal
from receiver.rules.records import Attempt, EventRow, OutboxJob
from receiver.rules.redact import strip_callbacks
from receiver.rules.signatures import parse_key, sign_v1

__all__ = ["Dispatcher", "event_body"]

log = logging.getLogger("receiver.workers.dispatcher")

LEASE_MARGIN = 10.0  # a claimed send is due again this long after its timeout if it never lands
# Seconds between claims while due sends wait for subscribers at their cap: a send of ours that
# ends wakes the dispatcher at once; this bounds the wait for another process's.
IDLE_POLL = 0.1
# A broker's sends claimed together are published as windows of at most
# RECEIVER_FANOUT_CONCURRENCY / WINDOWS. One window per claim measured best: a claim costs about
# the same whatever its size (its commit), and halves, which overlap one window's claim with the
# other's publishing, took twice the claims (JetStream at 40% of its own client against 52%).
WINDOWS = 1
UNSIGNED = Outcome(False, error="RECEIVER_CALLBACK_SECRET is unset: cannot sign", reached=False)


def event_body(event: EventRow) -> bytes:
    """The bytes of an event: the same on every attempt and every replay."""
    body = {
        "id": event.id,
        "object": "event",
        "type": event.type,
        "created_at": int(event.created_at),
        "data": event.data,
    }
    raw = orjson.dumps(body)
    # strip_callbacks changes only a top-level callback_url and text that says "webhooks" (in any
    # case); JSON writes every string out as it is, so without those this is already its output.
    if "webhooks" in raw.decode().lower() or (isinstance(event.data, dict) and "callback_url" in event.data):
        body["data"] = strip_callbacks(event.data)
        raw = orjson.dumps(body)
    return raw


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
        # URLs with their passwords opened (and whether each names a broker), by stored form
        self._urls: dict[str, tuple[str, bool]] = {}
        self._in_flight = 0  # sends under way in this process (a broker's window counts each)
        self._running: set[asyncio.Task[None]] = set()
        self._settled: list[Attempt] = []  # attempts that ended, recorded with the next claim
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
            room = max(0, self._limit - self._in_flight)
            claimed = 0
            try:
                claimed = self._spawn(await self._claim(room))
            except StoreError as exc:
                self._ctx.writes.failed()
                # The lease runs out and each send is attempted again: at least once, same webhook-id.
                log.warning("dispatcher: store unavailable (%s)", type(exc).__name__)
            if room > 0 and claimed == room:
                continue
            delay = 5.0
            if room > 0:  # else nothing can start before a send ends, and that wakes us
                try:
                    due = await self._ctx.store.next_outbox_due()
                except StoreError:
                    due = None
                now = self._ctx.clock()
                if due is not None:
                    # Already due yet not taken: its subscriber is at its cap, and one of our
                    # sends ending wakes us; IDLE_POLL bounds the wait for another process's.
                    delay = min(delay, due - now if due > now else IDLE_POLL)
            waiters = [asyncio.ensure_future(e.wait()) for e in (wakeup, stop, self._finished)]
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        if self._running:
            await asyncio.wait(self._running)
        if self._settled:
            try:
                await self._claim(0)
            except StoreError as exc:
                self._ctx.writes.failed()
                log.warning("dispatcher: could not record attempts (%s)", type(exc).__name__)

    async def run_until_idle(self) -> None:
        """Send until nothing is due and nothing is in flight (tests drive it this way)."""
        while True:
            self._finished.clear()
            claimed = self._spawn(await self._claim(max(1, self._limit - self._in_flight)))
            if not claimed and not self._running and not self._settled:
                return
            if not claimed and self._running:
                await self._finished.wait()

    async def _claim(self, room: int) -> list[OutboxJob]:
        """Record the attempts that ended since the last claim and take up to `room` sends, in
        one transaction: one commit per round however many sends end in it, and the store's
        count of sends in flight (leases) never includes one that has ended."""
        self.congestion.forget_idle(self._monotonic())
        settle, self._settled = self._settled, []
        return await self._ctx.store.claim_outbox(
            self._ctx.clock(),
            room,
            self.congestion.caps(),
            self.congestion.start,
            self._lease,
            settle=settle,
        )

    def _spawn(self, jobs: list[OutboxJob]) -> int:
        """Start the claimed sends: each HTTP one on its own; a broker's together, published as
        one window whose confirms are awaited together (one task, one round of the client)."""
        windows: dict[int, list[OutboxJob]] = {}
        for job in jobs:
            if self._url(job)[1]:
                windows.setdefault(job.subscription.pk, []).append(job)
            else:
                self._start([job])
        size = max(1, self._limit // WINDOWS)
        for window in windows.values():
            for at in range(0, len(window), size):
                self._start(window[at : at + size])
        return len(jobs)

    def _start(self, jobs: list[OutboxJob]) -> None:
        key = jobs[0].subscription.pk
        self._sending[key] = self._sending.get(key, 0) + len(jobs)
        self._in_flight += len(jobs)
        sending = asyncio.create_task(self._deliver(jobs))
        self._running.add(sending)
        sending.add_done_callback(functools.partial(self._done, key=key, sends=len(jobs)))

    def _done(self, task: asyncio.Task[None], key: int, sends: int) -> None:
        self._running.discard(task)
        self._in_flight -= sends
        self._sending[key] -= sends
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

    def _url(self, job: OutboxJob) -> tuple[str, bool]:
        """The subscription's URL with its password opened, and whether it names a broker."""
        stored = job.subscription.url
        found = self._urls.get(stored)
        if found is None:
            url = self._ctx.secrets.open_url(stored)
            found = self._urls[stored] = (url, urlsplit(url).scheme in BROKER_SCHEMES)
        return found

    async def _deliver(self, jobs: list[OutboxJob]) -> None:
        """Publish the jobs (one subscription's) and keep their attempts for the next claim."""
        ctx = self._ctx
        started = self._monotonic()
        timestamp = str(int(ctx.clock()))
        outcomes: list[Outcome | None] = []
        messages: list[Message] = []
        for job in jobs:
            key = self._signing_key(job)
            if key is None:
                outcomes.append(UNSIGNED)
                continue
            event = job.event
            body = event_body(event)
            messages.append(
                Message(event.id, event.type, body, timestamp, sign_v1(key, event.id, timestamp, body))
            )
            outcomes.append(None)
        if messages:
            published = iter(await self._destinations.publish_many(self._url(jobs[0])[0], messages))
            outcomes = [outcome or next(published) for outcome in outcomes]
        ended = self._monotonic()
        latency_ms = (ended - started) * 1000
        counted: dict[str, int] = {}
        for job, outcome in zip(jobs, outcomes, strict=True):
            assert outcome is not None
            if outcome.reached:
                self.congestion.record(
                    job.subscription.pk,
                    signal_of(outcome),
                    started=started,
                    now=ended,
                    latency=ended - started,
                    in_flight=self._sending.get(job.subscription.pk, 1),
                )
            attempt = self._judge(job, outcome, latency_ms)
            counted[attempt.outcome] = counted.get(attempt.outcome, 0) + 1
            # Recorded with the dispatcher's next claim (one transaction for every attempt that
            # ended meanwhile). Until it commits the send stays leased: a crash before then sends
            # it again (at least once, under the same webhook-id).
            self._settled.append(attempt)
        for name, count in counted.items():
            ctx.metrics.fanout.labels(outcome=name).inc(count)

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
                disables_subscription="the subscriber answered 410 Gone",
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
