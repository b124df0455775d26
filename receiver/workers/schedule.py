"""When to poll a task: learned per model from the store's recent history (pure policy + a cache).

Two figures pull against each other: polling late saves GETs when deliveries arrive, polling
early saves delay when they do not. The store already knows both sides of the trade-off for
each model: how long its recent tasks took (a distribution, not one number) and how reliably
their deliveries arrived. So:

- deliveries arriving (reliability >= 0.9): poll lazily, first after nearly every task of that
  model would have finished and been delivered (1.5 x the 99th percentile), then back off;
- deliveries lost (reliability <= 0.5): poll early and geometrically, from below the 2nd
  percentile, each poll 1.2 x the elapsed time of the last, so a result is never found later
  than 20% of the task's own duration after it was ready;
- in between: interpolate (in log time) between the two;
- with too little history: RECEIVER_POLL_AFTER, then exponential backoff.

Reliability counts whether a delivery arrived at all, even after a poll already settled the task,
so early polling cannot hide that deliveries have recovered.

Reliability of settled tasks learns an outage only after it settles the outage's tasks, lazily.
So the delivery health of each model (receiver.rules.health: silence where deliveries were due, polls
finding finished tasks with no delivery) overrides it: "stopped" polls as if every delivery were
lost, and pulls the open tasks' lazy first polls in to the eager plan at once; "arriving" judges
by the latest outcomes, so polling goes lazy again as soon as deliveries come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from receiver.errors import StoreError
from receiver.rules.health import ARRIVING, STOPPED, Health, Observation, judge
from receiver.rules.records import TaskRow
from receiver.settings import Settings
from store import Store

__all__ = ["History", "Scheduler"]

log = logging.getLogger("receiver.workers.schedule")

MIN_SAMPLES = 20
HISTORY_SIZE = 200
REFRESH_SECONDS = 2.0
EAGER_RATIO = 1.2
LAZY_RATIO = 1.5
EAGER_QUANTILE = 0.02
LAZY_QUANTILE = 0.99
JITTER = 0.05
EXPIRY_GRACE = 60.0  # seconds past execution_expires_after before a task is given up
OPEN_SAMPLE = 2000  # newest open tasks of a model that the health check looks at
WATCH_FOR = 3600.0  # a model with no submit or poll for this long is no longer watched


@dataclass(frozen=True)
class History:
    """What the store knows about a model's recent tasks."""

    completions: tuple[float, ...]  # seconds from submit to result, sorted ascending
    delivered: int  # settled tasks for which at least one delivery arrived
    settled: int  # terminal tasks old enough that a delivery would have arrived by now

    @property
    def learned(self) -> bool:
        return len(self.completions) >= MIN_SAMPLES and self.settled >= MIN_SAMPLES

    @property
    def reliability(self) -> float:
        return self.delivered / self.settled if self.settled else 1.0

    def quantile(self, q: float) -> float:
        values = self.completions
        position = q * (len(values) - 1)
        low = math.floor(position)
        high = min(low + 1, len(values) - 1)
        return values[low] + (values[high] - values[low]) * (position - low)


def eager_first(history: History) -> float:
    """The first poll when every delivery is lost: below nearly every task's duration."""
    return 0.8 * history.quantile(EAGER_QUANTILE)


def plan(
    history: History | None, settings: Settings, health: Health | None = None
) -> tuple[float, float, float]:
    """(first poll offset, growth ratio, smallest gap) in seconds for a model's tasks."""
    if history is None or not history.learned:
        return float(settings.poll_after), 2.0, 1.0
    median = max(history.quantile(0.5), 0.01)
    lazy_first = LAZY_RATIO * history.quantile(LAZY_QUANTILE)
    reliability = history.reliability
    if health is not None and health.state == STOPPED:
        reliability = 0.0
    elif health is not None and health.state == ARRIVING:
        # Settled history still holds the outage's tasks after a recovery: the latest outcomes win.
        reliability = max(reliability, health.evidence.share)
    weight = min(1.0, max(0.0, (reliability - 0.5) / 0.4))
    first = math.exp(
        (1 - weight) * math.log(max(eager_first(history), 1e-3)) + weight * math.log(max(lazy_first, 1e-3))
    )
    ratio = EAGER_RATIO + weight * (LAZY_RATIO - EAGER_RATIO)
    return first, ratio, max(0.05, 0.02 * median)


class Scheduler:
    """Next poll times for tasks, from a per-model History cached for a couple of seconds."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        fixed_interval: float | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._fixed = fixed_interval
        self._cache: dict[str, tuple[float, History]] = {}
        self._health: dict[str, Health] = {}
        self._seen: dict[str, float] = {}  # model -> last submit or poll (what watch() looks at)
        self.on_stopped: Callable[[], None] = lambda: None  # open polls were pulled in: wake the poller

    async def history(self, model: str) -> History:
        now = self._clock()
        self._seen[model] = now
        cached = self._cache.get(model)
        if cached is not None and now - cached[0] < REFRESH_SECONDS:
            return cached[1]
        return await self._refresh(model, now)

    async def _refresh(self, model: str, now: float) -> History:
        rows = await self._store.model_history(model, HISTORY_SIZE)
        completions = tuple(sorted(r.completion for r in rows))
        median = completions[len(completions) // 2] if completions else 0.0
        # A delivery can trail the result a little: judge only tasks settled for a while.
        settle = max(2.0, 0.25 * median)
        settled = [r for r in rows if r.terminal_at <= now - settle]
        history = History(
            completions=completions,
            delivered=sum(1 for r in settled if r.delivered),
            settled=len(settled),
        )
        self._cache[model] = (now, history)
        open_created = await self._store.open_tasks(model, OPEN_SAMPLE)
        before = self._health.get(model)
        after = judge(before, Observation(completions, rows, open_created, settle), now)
        self._health[model] = after
        if before is None or after.state != before.state:
            await self._changed(model, before, after, history, now)
        return history

    async def _changed(
        self, model: str, before: Health | None, after: Health, history: History, now: float
    ) -> None:
        e = after.evidence
        if after.state == STOPPED:
            log.warning(
                "deliveries stopped arriving for model %s: %.1f expected since the last one "
                "(%d of the latest %d outcomes were missed), polling early",
                model,
                e.expected,
                e.missed,
                e.delivered + e.missed,
            )
            if history.learned:
                moved = await self._store.advance_polls(model, eager_first(history), now)
                if moved:
                    self.on_stopped()
        elif after.state == ARRIVING and before is not None and before.state == STOPPED:
            log.info(
                "deliveries arriving again for model %s (%d of the latest %d outcomes delivered)",
                model,
                e.delivered,
                e.delivered + e.missed,
            )

    def health(self) -> dict[str, Health]:
        """The latest judgement per watched model."""
        return dict(sorted(self._health.items()))

    async def watch(self, stop: asyncio.Event) -> None:
        """Look at every recently active model every couple of seconds, so an outage is noticed
        within seconds even when no submit or poll asks."""
        while not stop.is_set():
            now = self._clock()
            for model, seen in list(self._seen.items()):
                if now - seen > WATCH_FOR:
                    del self._seen[model]
                    continue
                cached = self._cache.get(model)
                if cached is None or now - cached[0] >= REFRESH_SECONDS:
                    try:
                        await self._refresh(model, now)
                    except StoreError as exc:
                        log.warning("schedule: store unavailable (%s)", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=REFRESH_SECONDS)

    def _jitter(self, seconds: float) -> float:
        return seconds * (1.0 + JITTER * (2.0 * self._rng.random() - 1.0))

    def deadline(self, task: TaskRow) -> float:
        limit = task.created_at + self._settings.task_max_age
        if task.expires_at is not None:
            limit = min(limit, task.expires_at + EXPIRY_GRACE)
        return limit

    async def first_poll_at(self, model: str, created_at: float) -> float:
        if self._fixed is not None:
            return created_at + self._fixed
        history = await self.history(model)
        first, _, _ = plan(history, self._settings, self._health.get(model))
        return created_at + self._jitter(first)

    async def next_poll_at(self, task: TaskRow, now: float) -> float:
        """After a poll that found the task still open."""
        settings = self._settings
        if task.confirm_pending:
            # A thin or unsigned delivery said it is done; the provider may lag a moment.
            delay = min(float(settings.poll_after), 0.25 * 2.0 ** min(task.polls, 8))
            return min(now + delay, self.deadline(task))
        if self._fixed is not None:
            return min(now + self._fixed, self.deadline(task))
        history = await self.history(task.model)
        _, ratio, gap = plan(history, settings, self._health.get(task.model))
        elapsed = max(now - task.created_at, 0.0)
        interval = max(elapsed * (ratio - 1.0), gap)
        interval = min(self._jitter(interval), float(settings.poll_max_interval))
        return min(now + interval, self.deadline(task))

    def retry_at(self, task: TaskRow, now: float, retry_after: float | None) -> float:
        """After a failed poll (timeout, 5xx, 429): exponential backoff with full jitter."""
        cap = float(self._settings.poll_max_interval)
        ceiling = min(cap, 0.5 * 2.0 ** min(task.poll_failures + 1, 16))
        delay = self._rng.uniform(0.1, 1.0) * ceiling
        if retry_after is not None:
            # The provider's word wins over our cap (bounded only by the task's deadline).
            delay = max(delay, retry_after)
        return min(now + delay, max(self.deadline(task), now))
