"""The poll plan learned from history: lazy while deliveries arrive, early and geometric when not."""

from __future__ import annotations

import math
import random

import pytest

from receiver.rules.health import ARRIVING, STOPPED, UNKNOWN, Evidence, Health
from receiver.settings import Settings
from receiver.workers.schedule import History, plan

SETTINGS = Settings.from_env({"RECEIVER_POLL_AFTER": "60"})


def history(reliability: float, n: int = 200, median: float = 100.0, sigma: float = 0.5) -> History:
    rng = random.Random(7)
    completions = tuple(sorted(median * math.exp(rng.gauss(0, sigma)) for _ in range(n)))
    return History(completions, delivered=round(reliability * n), settled=n)


def test_no_history_falls_back_to_poll_after() -> None:
    assert plan(None, SETTINGS)[0] == 60.0
    assert plan(history(1.0, n=5), SETTINGS)[0] == 60.0


def test_deliveries_arriving_poll_after_nearly_every_task_is_done() -> None:
    h = history(1.0)
    first, ratio, _ = plan(h, SETTINGS)
    assert first > h.quantile(0.99) and ratio == pytest.approx(1.5)


def test_deliveries_lost_poll_early_and_geometrically() -> None:
    h = history(0.0)
    first, ratio, _ = plan(h, SETTINGS)
    assert first < h.quantile(0.05) and ratio == pytest.approx(1.2)


@pytest.mark.parametrize(("low", "high"), [(0.0, 0.6), (0.6, 0.8), (0.8, 1.0)])
def test_first_poll_grows_with_reliability(low: float, high: float) -> None:
    assert plan(history(low), SETTINGS)[0] < plan(history(high), SETTINGS)[0]


def test_quantiles_interpolate() -> None:
    h = History(completions=(1.0, 2.0, 3.0, 4.0, 5.0), delivered=0, settled=0)
    assert (h.quantile(0.0), h.quantile(0.5), h.quantile(1.0), h.quantile(0.125)) == (1.0, 3.0, 5.0, 1.5)


def health(state: str, delivered: int = 20, missed: int = 0) -> Health:
    return Health(state, 0.0, Evidence(delivered, missed, 0.0, 0.0, None))


@pytest.mark.parametrize(
    ("reliability", "judged", "lazy"),
    [
        # Settled history says all is well, but deliveries just stopped: poll early at once.
        (1.0, health(STOPPED), False),
        # History still full of the outage's tasks, the latest outcomes delivered: lazy again.
        (0.0, health(ARRIVING), True),
        (0.0, health(ARRIVING, delivered=2, missed=18), False),
        # Nothing judged yet: history decides, as before.
        (1.0, health(UNKNOWN), True),
        (0.0, health(UNKNOWN), False),
        (1.0, None, True),
    ],
)
def test_delivery_health_overrides_settled_history(
    reliability: float, judged: Health | None, lazy: bool
) -> None:
    h = history(reliability)
    first, ratio, _ = plan(h, SETTINGS, judged)
    if lazy:
        assert first > h.quantile(0.99) and ratio == pytest.approx(1.5)
    else:
        assert first < h.quantile(0.05) and ratio == pytest.approx(1.2)
