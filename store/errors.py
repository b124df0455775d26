"""The errors the store raises on purpose: one tree, mapped to HTTP statuses in one place."""

from __future__ import annotations

__all__ = ["OverLimit", "StoreError", "StoreUnavailable", "UnknownCursor", "UnknownToken", "WrongVideo"]


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class StoreUnavailable(StoreError):
    """The store cannot take writes right now (disk full, locked, closed)."""


class UnknownToken(StoreError):
    """No task owns this callback token."""


class WrongVideo(StoreError):
    """A per-task delivery names a video other than the task's."""


class UnknownCursor(StoreError):
    """A list's `after` names no row."""


class OverLimit(StoreError):
    """A write would pass the cap its caller gave: nothing was written. The count stops as soon
    as it passes the cap, so `count` is at most `limit + 1`: "more than `limit`"."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"more than {limit} ({count} counted)")
        self.count = count
        self.limit = limit
