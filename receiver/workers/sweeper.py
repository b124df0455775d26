"""Ends what a submit left unknown: orphaned submits become unconfirmed, and unconfirmed ones that
no delivery adopted within their window are deleted (their key and callback token are free).
Each pass also folds the appended count changes (store.fold_counts)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from receiver.context import Context
from receiver.errors import StoreError
from receiver.rules import decide

__all__ = ["Sweeper"]

log = logging.getLogger("receiver.workers.sweeper")

SWEEP_EVERY = 10.0  # seconds between passes; each is two indexed statements
BATCH = 500  # tasks moved or deleted per statement at most


class Sweeper:
    def __init__(self, ctx: Context, every: float = SWEEP_EVERY) -> None:
        self._ctx = ctx
        self._every = every

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sweep()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._every)

    async def sweep(self) -> tuple[int, int]:
        """One pass (tests call it directly): (made unconfirmed, deleted)."""
        ctx = self._ctx
        orphan_before, expire_before = decide.submit_sweep(
            ctx.clock(),
            ctx.settings.provider_timeout + decide.ORPHAN_GRACE,
            ctx.settings.submit_confirm_window,
        )
        try:
            orphaned, expired = await ctx.store.sweep_submits(orphan_before, expire_before, BATCH)
            # Keeps /metrics and /v1/stats reading a fixed number of rows (store.fold_counts).
            await ctx.store.fold_counts()
        except StoreError as exc:
            log.warning("sweeper: store unavailable (%s)", type(exc).__name__)
            return 0, 0
        if orphaned:
            log.warning("%d submits left by a stopped process are kept as unconfirmed", orphaned)
        if expired:
            log.warning("%d unconfirmed submits ended with no word from the provider", expired)
        return orphaned, expired
