"""Sends in flight per subscriber, adapted as TCP adapts its congestion window (pure: takes `now`).

Each subscriber gets a window (how many sends may be in flight to it), learned from its answers:

- it starts at RECEIVER_FANOUT_PER_SUBSCRIBER and grows while answers come back quickly: by one
  per answer up to the slow-start threshold (doubling every round trip), then by 1/window
  (one per round trip), up to RECEIVER_FANOUT_CONCURRENCY, and only while the window is in use;
- an overloaded answer (5xx, 408, 429) or a slow one (latency past twice its usual plus a grace,
  or past half the timeout) halves it, once per round trip: sends already under way when it was
  cut do not cut it again;
- a timeout or a connection failure drops it to one, like TCP after a retransmission timeout.

So a fast subscriber gets up to the global cap, a slow or failing one shrinks to one in flight,
and a recovering one grows back. Other answers (2xx, and 4xx that say "no" quickly) count as
fast. A window unused for IDLE seconds is forgotten (it starts again from the start value).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum

__all__ = ["Congestion", "Signal", "Window"]

FLOOR = 1
SLOW_FACTOR = 2.0  # latency past this many times the subscriber's usual one is a slow answer
GRACE = 0.25  # seconds of extra latency that never count as slow (our own loop, the network)
BASE_DRIFT = 0.01  # how fast the usual latency follows answers slower than it (per answer)
IDLE = 600.0
SWEEP_EVERY = 60.0  # seconds between looks for idle windows


class Signal(Enum):
    ANSWERED = "answered"  # any answer but an overloaded one
    OVERLOADED = "overloaded"  # 5xx, 408, 429
    UNREACHABLE = "unreachable"  # timeout, connection refused or reset


@dataclass
class Window:
    size: float
    threshold: float  # slow start below it, one per round trip above it
    usual: float | None = None  # seconds: the smallest recent latency, drifting up slowly
    cut_at: float = float("-inf")  # when it was last cut
    used_at: float = 0.0


class Caps(Mapping[int, int]):
    """A live view: whole sends in flight allowed per known subscriber (no copy per claim)."""

    def __init__(self, windows: dict[int, Window]) -> None:
        self._windows = windows

    def __getitem__(self, key: int) -> int:
        return int(self._windows[key].size)

    def __iter__(self) -> Iterator[int]:
        return iter(self._windows)

    def __len__(self) -> int:
        return len(self._windows)


class Congestion:
    """The windows of every subscriber seen lately, keyed by subscription pk."""

    def __init__(self, *, start: int, ceiling: int, timeout: float) -> None:
        self.start = max(FLOOR, min(start, ceiling))
        self.ceiling = max(FLOOR, ceiling)
        self.slow = timeout / 2
        self._windows: dict[int, Window] = {}
        self._swept_at = float("-inf")

    def window(self, key: int) -> Window | None:
        return self._windows.get(key)

    def caps(self) -> Mapping[int, int]:
        """Whole sends in flight allowed per known subscriber (others: `start`)."""
        return Caps(self._windows)

    def record(
        self, key: int, signal: Signal, *, started: float, now: float, latency: float, in_flight: int
    ) -> Window:
        """One send to `key` started at `started` ended at `now` after `latency` seconds with
        `signal`, while `in_flight` sends to it (this one included) were under way."""
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = Window(size=float(self.start), threshold=float(self.ceiling))
        w.used_at = now
        if signal is Signal.ANSWERED:
            if w.usual is None or latency < w.usual:
                w.usual = latency
            else:
                w.usual += (latency - w.usual) * BASE_DRIFT
            if latency > self.slow or latency > SLOW_FACTOR * w.usual + GRACE:
                signal = Signal.OVERLOADED
            elif 2 * in_flight >= w.size:  # grow only a window that is in use
                w.size += 1.0 if w.size < w.threshold else 1.0 / w.size
                w.size = min(w.size, float(self.ceiling))
                return w
            else:
                return w
        if started < w.cut_at:
            return w  # under way before the last cut: that cut already answered for it
        w.threshold = max(float(FLOOR), w.size / 2)
        w.size = w.threshold if signal is Signal.OVERLOADED else float(FLOOR)
        w.cut_at = now
        return w

    def forget_idle(self, now: float) -> None:
        if now - self._swept_at < SWEEP_EVERY:
            return
        self._swept_at = now
        for key in [k for k, w in self._windows.items() if now - w.used_at > IDLE]:
            del self._windows[key]
