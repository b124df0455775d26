"""What every route and worker shares: settings, store, provider, clock, and wake-ups."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from receiver.logsummary import LogSummary
from receiver.metrics import Metrics
from receiver.outbound.provider import Provider
from receiver.rules.signatures import Key
from receiver.secrets_at_rest import SecretBox
from receiver.settings import Settings
from receiver.workers.schedule import Scheduler
from store import Store

__all__ = ["Context", "WriteHealth"]

# How long one failed write keeps /readyz unready when no write has succeeded since. Bounded so
# that a process nobody sends writes to (because it is unready) still comes back by itself.
WRITE_FAILURE_WINDOW = 30.0


@dataclass
class WriteHealth:
    """Outcomes of real writes (a ping that writes nothing cannot see a full disk)."""

    monotonic: Callable[[], float] = time.monotonic
    last_ok: float | None = None
    last_failure: float | None = None

    def ok(self) -> None:
        self.last_ok = self.monotonic()

    def failed(self) -> None:
        self.last_failure = self.monotonic()

    @property
    def failing(self) -> bool:
        failure = self.last_failure
        if failure is None or (self.last_ok is not None and self.last_ok > failure):
            return False
        return self.monotonic() - failure < WRITE_FAILURE_WINDOW


@dataclass
class Context:
    settings: Settings
    store: Store
    provider: Provider
    clock: Callable[[], float]
    webhook_keys: tuple[Key, ...] = field(repr=False)
    scheduler: Scheduler = field(repr=False)
    metrics: Metrics = field(default_factory=Metrics, repr=False)
    secrets: SecretBox = field(default_factory=lambda: SecretBox(()), repr=False)
    writes: WriteHealth = field(default_factory=WriteHealth, repr=False)
    # One line per cause (an error code) per 10 s, however many deliveries an outage refuses.
    refused: LogSummary = field(
        default_factory=lambda: LogSummary(
            logging.getLogger("receiver.routes.webhooks"), "deliveries refused"
        ),
        repr=False,
    )
    unavailable: LogSummary = field(
        default_factory=lambda: LogSummary(
            logging.getLogger("receiver.routes.videos"), "requests answered 503"
        ),
        repr=False,
    )
    poll_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    fanout_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # A result was recorded: its files may be due for keeping now (receiver.workers.capture).
    capture_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # Replaced on every new event: stream readers wait on the one they saw (a broadcast).
    new_events: asyncio.Event = field(default_factory=asyncio.Event)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    # Event streams this process holds open now (capped in receiver.routes.events).
    open_streams: int = 0

    def wake_poller(self) -> None:
        self.poll_wakeup.set()

    def heard(self, topic: str) -> None:
        """Another process committed news (the store's cross-process wake-up)."""
        if topic == "tasks":
            self.poll_wakeup.set()
        elif topic == "outbox":
            self.fanout_wakeup.set()
        elif topic == "events":
            self.capture_wakeup.set()
            self.new_events.set()
            self.new_events = asyncio.Event()

    def terminal_recorded(self, sends: int | None = None) -> None:
        """A terminal result (so an event, and `sends` sends; None: unknown) was just committed."""
        if sends is None or sends > 0:
            self.fanout_wakeup.set()
        self.capture_wakeup.set()
        self.new_events.set()
        self.new_events = asyncio.Event()
