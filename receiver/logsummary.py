"""Log repeated events as a summary: at most one line per cause per interval, with a count.

An outage or an attack refuses deliveries by the thousand; a line each would flood the log and
bury everything else. The first event of a cause is logged at once (an operator sees the
problem start), the ones after it are counted and logged once the interval is over.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

__all__ = ["LogSummary"]


@dataclass
class LogSummary:
    """`note(cause)` for each event; `what` says what is counted ("deliveries refused")."""

    logger: logging.Logger
    what: str
    interval: float = 10.0
    _counts: dict[str, int] = field(default_factory=dict)
    _timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)

    def note(self, cause: str, detail: str = "") -> None:
        if cause in self._timers:
            self._counts[cause] = self._counts.get(cause, 0) + 1
            return
        self.logger.warning("%s: 1 %s%s", self.what, cause, f" ({detail})" if detail else "")
        self._arm(cause)

    def _arm(self, cause: str) -> None:
        self._counts[cause] = 0
        loop = asyncio.get_running_loop()
        self._timers[cause] = loop.call_later(self.interval, self._flush, cause)

    def _flush(self, cause: str) -> None:
        del self._timers[cause]
        count = self._counts.pop(cause, 0)
        if count:
            self.logger.warning("%s: %d %s in the last %g s", self.what, count, cause, self.interval)
            self._arm(cause)  # still happening: the next line waits a whole interval too

    def close(self) -> None:
        """Log what is counted and stop the timers (at shutdown)."""
        for cause in list(self._timers):
            self._timers[cause].cancel()
            count = self._counts.pop(cause, 0)
            del self._timers[cause]
            if count:
                self.logger.warning("%s: %d %s before shutdown", self.what, count, cause)
