"""Whether a model's deliveries are arriving, judged from early evidence (pure: takes `now`, no I/O).

Reliability learned from settled tasks answers too late when deliveries stop at once: in an
outage tasks settle only through the (lazy) polls themselves. Two kinds of evidence exist
much earlier:

- silence: the completion distribution says how many of the open tasks should have finished,
  and so been delivered, since the last delivery arrived. Under "arriving" the chance that none
  arrived while `SILENCE` were expected is e^-SILENCE (8: 0.03%); each poll that found a task
  finished with no delivery counts as one such expected delivery, for certain;
- arrivals: deliveries that come again after the outage was called, when they also make at
  least half of the most recent outcomes.

The states: "unknown" (too little evidence yet), "arriving", "stopped".
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from receiver.rules.records import HistoryRow

__all__ = ["ARRIVING", "STOPPED", "UNKNOWN", "Evidence", "Health", "Observation", "judge"]

ARRIVING = "arriving"
STOPPED = "stopped"
UNKNOWN = "unknown"

SILENCE = 8.0  # deliveries expected since the last one arrived before they count as stopped
RECENT = 20  # latest outcomes (delivered or missed) that recovery is judged on
RECOVER_COUNT = 3  # deliveries after the outage was called, at least
RECOVER_SHARE = 0.5  # share of the latest outcomes that must be deliveries
MIN_COMPLETIONS = 20  # fewer learned durations: open tasks are no evidence (no distribution)


@dataclass(frozen=True)
class Observation:
    """What the store says about one model right now."""

    completions: tuple[float, ...]  # learned seconds from submit to result, sorted ascending
    settled: Sequence[HistoryRow]  # its latest terminal tasks, any order
    open_created: Sequence[float]  # created_at of its tasks with no terminal result
    lag: float  # how long a delivery may trail its result before its absence means something


@dataclass(frozen=True)
class Evidence:
    delivered: int  # of the latest RECENT outcomes, tasks whose delivery arrived
    missed: int  # of the latest RECENT outcomes, tasks a poll found finished with no delivery
    overdue: float  # open tasks that should have been delivered by now (expected count)
    expected: float  # deliveries expected since the last one arrived (misses count 1 each)
    last_delivery_at: float | None

    @property
    def share(self) -> float:
        """Delivered share of the latest outcomes (1.0 with none yet)."""
        total = self.delivered + self.missed
        return self.delivered / total if total else 1.0


NO_EVIDENCE = Evidence(0, 0, 0.0, 0.0, None)


@dataclass(frozen=True)
class Health:
    state: str  # arriving, stopped, unknown
    since: float | None  # when this state was decided (None: unknown from the start)
    evidence: Evidence = NO_EVIDENCE
    checked_at: float | None = None


def _cdf(completions: tuple[float, ...], seconds: float) -> float:
    if seconds <= 0:
        return 0.0
    return bisect.bisect_right(completions, seconds) / len(completions)


def evidence(observation: Observation, now: float) -> Evidence:
    o = observation
    delivered_at = [r.terminal_at for r in o.settled if r.delivered]
    last = max(delivered_at) if delivered_at else None
    judged_until = now - o.lag  # a missing delivery means something only after the lag
    # Deliveries count at once; a miss only once the lag has passed (the delivery may be on its way).
    outcomes = sorted(
        ((r.terminal_at, r.delivered) for r in o.settled if r.delivered or r.terminal_at <= judged_until),
        reverse=True,
    )[:RECENT]
    delivered = sum(1 for _, ok in outcomes if ok)
    expected = float(
        sum(
            1
            for r in o.settled
            if not r.delivered and r.terminal_at <= judged_until and (last is None or r.terminal_at > last)
        )
    )
    overdue = 0.0
    if len(o.completions) >= MIN_COMPLETIONS:
        for created in o.open_created:
            due = _cdf(o.completions, judged_until - created)
            overdue += due
            # The chance it finished after the last delivery, given it had not by then.
            before = _cdf(o.completions, last - created) if last is not None else 0.0
            if due > before and before < 1.0:
                expected += (due - before) / (1.0 - before)
    return Evidence(delivered, len(outcomes) - delivered, round(overdue, 3), round(expected, 3), last)


def judge(previous: Health | None, observation: Observation, now: float) -> Health:
    """The model's delivery health after looking at `observation` at `now`."""
    found = evidence(observation, now)
    state = previous.state if previous is not None else UNKNOWN
    since = previous.since if previous is not None else None
    if state != STOPPED and found.expected >= SILENCE:
        return Health(STOPPED, now, found, now)
    if state != ARRIVING:
        fresh = sum(
            1 for r in observation.settled if r.delivered and (since is None or r.terminal_at > since)
        )
        if fresh >= RECOVER_COUNT and found.share >= RECOVER_SHARE:
            return Health(ARRIVING, now, found, now)
    return Health(state, since, found, now)
