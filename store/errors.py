"""The errors the store raises on purpose: the StoreError branch of the one tree in receiver.errors,
re-exported here so backends import them from their own package."""

from __future__ import annotations

from receiver.errors import OverLimit, StoreError, StoreUnavailable, UnknownCursor, UnknownToken, WrongVideo

__all__ = ["OverLimit", "StoreError", "StoreUnavailable", "UnknownCursor", "UnknownToken", "WrongVideo"]
