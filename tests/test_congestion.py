"""Per-subscriber send windows: grow while answers come fast, halve on overload, drop on timeouts."""

from __future__ import annotations

import pytest

from receiver.rules.congestion import Congestion, Signal

FAST = 0.01  # seconds: a subscriber's usual answer
OK, BUSY, GONE = Signal.ANSWERED, Signal.OVERLOADED, Signal.UNREACHABLE


def drive(steps: list[tuple[Signal, float]], *, start: int = 4, ceiling: int = 64, busy: int = 64) -> float:
    """Feed answers one after another (each started after the one before ended); the window's size."""
    congestion = Congestion(start=start, ceiling=ceiling, timeout=15.0)
    now = 0.0
    for signal, latency in steps:
        started, now = now, now + latency
        window = congestion.record(7, signal, started=started, now=now, latency=latency, in_flight=busy)
    return window.size


@pytest.mark.parametrize(
    ("steps", "size"),
    [
        # Slow start: one more per fast answer.
        ([(OK, FAST)] * 10, 4 + 10),
        # Up to the global cap, never past it.
        ([(OK, FAST)] * 500, 64),
        # An overloaded answer (5xx, 429) halves it; a timeout drops it to one.
        ([(OK, FAST)] * 12 + [(BUSY, FAST)], 8),
        ([(OK, FAST)] * 12 + [(GONE, 15.0)], 1),
        # Never below one, however many failures.
        ([(GONE, 15.0)] * 10 + [(BUSY, FAST)] * 10, 1),
        # After a cut, growth is one per window's worth of answers (past the slow-start threshold).
        ([(OK, FAST)] * 12 + [(BUSY, FAST)] + [(OK, FAST)] * 8, 8 + 0.95),
        # A recovering subscriber grows back: slow start up to half the size it had.
        ([(OK, FAST)] * 12 + [(GONE, 15.0)] + [(OK, FAST)] * 7, 8),
        # Answers far slower than usual (queueing at the subscriber) halve it.
        ([(OK, FAST)] * 12 + [(OK, 1.0)], 8),
        # Slower, but within the grace: keep growing (our own busy loop adds that much).
        ([(OK, FAST)] * 12 + [(OK, 0.2)], 17),
        # Always slow: past half the timeout is too slow whatever the usual.
        ([(OK, 9.0)] * 5, 1),
    ],
)
def test_window(steps: list[tuple[Signal, float]], size: float) -> None:
    assert drive(steps) == pytest.approx(size, abs=0.01)


def test_an_unused_window_does_not_grow() -> None:
    assert drive([(OK, FAST)] * 50, busy=1) == 4


def test_sends_under_way_before_a_cut_do_not_cut_again() -> None:
    congestion = Congestion(start=16, ceiling=64, timeout=15.0)
    # 16 sends started at 0 all time out at 15: one cut, to one.
    for _ in range(16):
        congestion.record(1, GONE, started=0.0, now=15.0, latency=15.0, in_flight=16)
    # 8 overloaded answers to sends started before the cut: no further halving below 1 anyway;
    # one started after it does cut (threshold halves again).
    window = congestion.window(1)
    assert window is not None and (window.size, window.threshold) == (1, 8)
    congestion.record(1, OK, started=15.0, now=15.01, latency=0.01, in_flight=1)
    assert window.size == 2
    congestion.record(1, BUSY, started=14.0, now=15.02, latency=1.0, in_flight=1)
    assert window.size == 2  # started before the cut at 15
    congestion.record(1, BUSY, started=15.01, now=15.03, latency=0.02, in_flight=1)
    assert window.size == 1


def test_caps_and_forgetting() -> None:
    congestion = Congestion(start=4, ceiling=64, timeout=15.0)
    congestion.record(1, GONE, started=0.0, now=1.0, latency=1.0, in_flight=1)
    congestion.record(2, OK, started=0.0, now=1.0, latency=0.01, in_flight=4)
    assert dict(congestion.caps()) == {1: 1, 2: 5}
    congestion.forget_idle(1.0 + 601)
    assert dict(congestion.caps()) == {}


def test_start_is_bounded_by_the_ceiling() -> None:
    assert Congestion(start=32, ceiling=8, timeout=15.0).start == 8
