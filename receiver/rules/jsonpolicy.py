"""The one JSON policy for everything we parse from outside (pure): request bodies, webhook
deliveries, provider answers and stored bodies shown back.

Accepted: RFC 8259 JSON in UTF-8, nested at most MAX_DEPTH deep, with finite numbers and
integers that fit in 64 bits. Refused (JSONPolicyError): NaN, Infinity and -Infinity (and
literals such as 1e400 that overflow to them), lone surrogates, U+0000 in strings (PostgreSQL's
jsonb cannot hold it), deeper nesting, bigger integers. Whatever passes can be stored, indexed
and written back out by every JSON library and store we use (orjson's writer stops at 255
levels and 64-bit integers; Python's reader near 1,000 levels), so no stored row can later
break a read.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from receiver.errors import JSONPolicyError

__all__ = ["MAX_DEPTH", "JSONPolicyError", "check", "loads", "text"]

MAX_DEPTH = 32
_INT_LOW = -(2**63)
_INT_HIGH = 2**64 - 1


def loads(data: bytes | str) -> Any:
    """Parse `data` under the policy, or raise JSONPolicyError."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise JSONPolicyError(_reason(str(exc))) from None
    if _walk(value):
        # orjson reads an integer past 64 bits as a float: tell the two apart on the text.
        _check_big_numbers(data)
    return value


def check(value: Any) -> None:
    """Hold an already-parsed value to the same policy (e.g. one built in code)."""
    if _walk(value):
        raise JSONPolicyError("an integer does not fit in 64 bits")


def text(raw: bytes) -> str:
    """`raw` as a string held to the policy's string rules (valid UTF-8, no U+0000, no lone
    surrogates), for text that arrives outside JSON (multipart form fields)."""
    try:
        # Python's strict UTF-8 also refuses encoded surrogates (ED A0 80 and the like).
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JSONPolicyError("not valid UTF-8") from None
    _string(value)
    return value


def _walk(value: Any) -> bool:
    """Check depth, finiteness and strings; True when a big number needs a closer look."""
    suspicious = False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_DEPTH:
                raise JSONPolicyError(f"nested deeper than {MAX_DEPTH} levels")
            for key, child in item.items():
                if not isinstance(key, str):
                    raise JSONPolicyError("object keys must be strings")
                _string(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > MAX_DEPTH:
                raise JSONPolicyError(f"nested deeper than {MAX_DEPTH} levels")
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _string(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not _INT_LOW <= item <= _INT_HIGH:
                suspicious = True
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise JSONPolicyError("numbers must be finite (no NaN or Infinity)")
            if abs(item) >= 2.0**63:
                suspicious = True
        else:
            raise JSONPolicyError(f"{type(item).__name__} is not a JSON value")
    return suspicious


def _string(text: str) -> None:
    if "\x00" in text:
        raise JSONPolicyError("strings must not hold U+0000")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JSONPolicyError("strings must not hold lone surrogates") from None


def _bounded_int(text: str) -> int:
    value = int(text)
    if not _INT_LOW <= value <= _INT_HIGH:
        raise JSONPolicyError("an integer does not fit in 64 bits")
    return value


def _check_big_numbers(data: bytes | str) -> None:
    try:
        json.loads(data, parse_int=_bounded_int)
    except JSONPolicyError:
        raise
    except (ValueError, RecursionError):
        raise JSONPolicyError("an integer does not fit in 64 bits") from None


def _reason(message: str) -> str:
    lowered = message.lower()
    if "not valid utf-8" in lowered:  # orjson: "str is not valid UTF-8: surrogates not allowed"
        return "not valid UTF-8"
    if "surrogate" in lowered:
        return "strings must not hold lone surrogates"
    if "infinity" in lowered:
        return "numbers must be finite (no NaN or Infinity)"
    if "depth" in lowered or "recursion" in lowered:
        return f"nested deeper than {MAX_DEPTH} levels"
    if "utf-8" in lowered:
        return "not valid UTF-8"
    return "not valid JSON"
