"""Delivery health from early evidence: silence where deliveries were due, misses, recovery."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from receiver.rules.health import ARRIVING, STOPPED, UNKNOWN, Health, Observation, evidence, judge
from receiver.rules.records import HistoryRow

NOW = 10_000.0
LAG = 2.0
# Learned durations: log-normal, median 10 s.
_rng = random.Random(3)
COMPLETIONS = tuple(sorted(10.0 * math.exp(_rng.gauss(0.0, 0.5)) for _ in range(200)))


def delivered(*ages: float) -> list[HistoryRow]:
    """Tasks whose delivery arrived `age` seconds before NOW."""
    return [HistoryRow(10.0, NOW - age, True) for age in ages]


def missed(*ages: float) -> list[HistoryRow]:
    """Tasks a poll found finished, with no delivery, `age` seconds before NOW."""
    return [HistoryRow(10.0, NOW - age, False) for age in ages]


def observe(
    settled: list[HistoryRow], open_ages: Sequence[float] = (), completions: tuple[float, ...] = COMPLETIONS
) -> Observation:
    return Observation(completions, settled, [NOW - a for a in open_ages], LAG)


STEADY = delivered(*[0.1 * i for i in range(1, 40)])  # a delivery every 0.1 s until now
OUTAGE_OPEN = [float(a) for a in range(12, 40)]  # 28 open tasks aged 12-40 s: nearly all due
SINCE_OUTAGE = delivered(*[30 + 0.5 * i for i in range(20)])  # the last delivery 30 s ago


@pytest.mark.parametrize(
    ("before", "observation", "after"),
    [
        # Nothing known yet.
        (None, observe([]), UNKNOWN),
        # A few deliveries: arriving.
        (None, observe(delivered(1, 2, 3)), ARRIVING),
        (None, observe(delivered(1, 2)), UNKNOWN),
        # Deliveries keep coming, young tasks open: nothing to worry about.
        (ARRIVING, observe(STEADY, [0.5 * i for i in range(40)]), ARRIVING),
        # No delivery for 30 s while 28 tasks aged 12-40 s are open: stopped.
        (ARRIVING, observe(SINCE_OUTAGE, OUTAGE_OPEN), STOPPED),
        (UNKNOWN, observe(SINCE_OUTAGE, OUTAGE_OPEN), STOPPED),
        # The same open tasks, but a delivery just arrived: they are slow, not undelivered.
        (ARRIVING, observe(SINCE_OUTAGE + delivered(0.5), OUTAGE_OPEN), ARRIVING),
        # Only three open tasks overdue: too little to call it.
        (ARRIVING, observe(SINCE_OUTAGE, [30.0, 31.0, 32.0]), ARRIVING),
        # Without a learned distribution open tasks say nothing, but misses still count.
        (ARRIVING, observe(SINCE_OUTAGE, OUTAGE_OPEN, completions=()), ARRIVING),
        (ARRIVING, observe(SINCE_OUTAGE + missed(*range(3, 11)), [], completions=()), STOPPED),
        # Misses younger than the lag are not evidence yet (their delivery may be on its way).
        (ARRIVING, observe(SINCE_OUTAGE + missed(*[0.1 * i for i in range(1, 19)]), []), ARRIVING),
        # Stopped stays stopped while nothing arrives.
        (STOPPED, observe(SINCE_OUTAGE + missed(*range(3, 20)), OUTAGE_OPEN), STOPPED),
        # Two deliveries after the stop are not a recovery; three among mostly deliveries are.
        (STOPPED, observe(missed(*range(3, 10)) + delivered(0.5, 1), []), STOPPED),
        (STOPPED, observe(missed(*range(3, 6)) + delivered(0.5, 1, 1.5, 2.0, 2.5), []), ARRIVING),
        # A trickle of deliveries among many misses is still an outage.
        (STOPPED, observe(missed(*range(3, 20)) + delivered(0.5, 1, 1.5), []), STOPPED),
    ],
)
def test_judge(before: str | None, observation: Observation, after: str) -> None:
    # A previous judgement 20 s ago (the outage, when stopped, began before then).
    previous = None if before is None else Health(before, NOW - 20)
    assert judge(previous, observation, NOW).state == after


def test_since_moves_only_with_the_state() -> None:
    stopped = judge(Health(ARRIVING, NOW - 100), observe(SINCE_OUTAGE, OUTAGE_OPEN), NOW)
    assert (stopped.state, stopped.since) == (STOPPED, NOW)
    still = judge(stopped, observe(SINCE_OUTAGE, OUTAGE_OPEN), NOW + 2)
    assert (still.state, still.since) == (STOPPED, NOW)


def test_deliveries_from_before_the_stop_do_not_end_it() -> None:
    stopped = Health(STOPPED, NOW - 5)
    assert judge(stopped, observe(delivered(6, 7, 8, 9)), NOW).state == STOPPED


def test_evidence_counts() -> None:
    found = evidence(observe(SINCE_OUTAGE + missed(5, 1), OUTAGE_OPEN), NOW)
    assert (found.delivered, found.missed) == (19, 1)  # the latest 20 judged; the 1 s miss is not yet
    assert found.last_delivery_at == NOW - 30
    assert 20 < found.overdue <= len(OUTAGE_OPEN)
    assert found.expected > 8 and found.share == pytest.approx(0.95)
