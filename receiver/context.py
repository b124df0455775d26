"""What every route and worker shares: settings, store, provider, clock, and wake-ups."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from receiver.metrics import Metrics
from receiver.provider import Provider
from receiver.schedule import Scheduler
from receiver.settings import Settings
from receiver.signatures import Key
from store import Store

__all__ = ["Context"]


@dataclass
class Context:
    settings: Settings
    store: Store
    provider: Provider
    clock: Callable[[], float]
    webhook_keys: tuple[Key, ...] = field(repr=False)
    scheduler: Scheduler = field(repr=False)
    metrics: Metrics = field(default_factory=Metrics, repr=False)
    poll_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    fanout_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # Replaced on every new event: stream readers wait on the one they saw (a broadcast).
    new_events: asyncio.Event = field(default_factory=asyncio.Event)
    workers: list[asyncio.Task[None]] = field(default_factory=list)

    def wake_poller(self) -> None:
        self.poll_wakeup.set()

    def heard(self, topic: str) -> None:
        """Another process committed news (the store's cross-process wake-up)."""
        if topic == "tasks":
            self.poll_wakeup.set()
        elif topic == "outbox":
            self.fanout_wakeup.set()
        elif topic == "events":
            self.new_events.set()
            self.new_events = asyncio.Event()

    def terminal_recorded(self, sends: int | None = None) -> None:
        """A terminal result (so an event, and `sends` sends; None: unknown) was just committed."""
        if sends is None or sends > 0:
            self.fanout_wakeup.set()
        self.new_events.set()
        self.new_events = asyncio.Event()
