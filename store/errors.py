"""The errors the store raises on purpose: one tree, mapped to HTTP statuses in one place."""

from __future__ import annotations

__all__ = ["StoreError", "StoreUnavailable", "UnknownCursor", "UnknownToken", "WrongVideo"]


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
