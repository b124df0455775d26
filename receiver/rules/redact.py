"""What never leaves the receiver (pure): our per-task callback URLs, and credential headers.

`strip_callbacks` is the one place that removes our own callback URL (its token is a
credential) from anything a provider sends back: video objects from submits, polls and
deliveries, provider error messages, and stored rows on their way out. `redact_headers` is the
one rule for the headers we keep with a delivery.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "REDACTED",
    "find_token",
    "is_secret_header",
    "redact_headers",
    "strip_callbacks",
    "strip_text",
]

REDACTED = "[redacted]"
CALLBACK_PLACEHOLDER = "[receiver callback URL]"

# {anything}/webhooks/{token}: the token alphabet of secrets.token_urlsafe, at any scheme/host,
# also percent-encoded slashes as some providers echo URLs inside query strings.
_CALLBACK = re.compile(
    r"(?:[A-Za-z][A-Za-z0-9+.-]*:(?://|%2F%2F)[^\s\"'<>]*?)?(?:/|%2F)webhooks(?:/|%2F)[A-Za-z0-9_-]{16,}",
    re.IGNORECASE,
)

# A callback token as we mint it (secrets.token_urlsafe(32)): 43 characters of the URL-safe
# alphabet. A provider may echo it bare, outside any URL; we keep only its hash, so a bare copy is
# found by hashing every such run of characters (a run longer than _RUN_LIMIT is a blob, not a token
# with a prefix, and is not searched).
_TOKEN_LENGTH = 43
_RUN = re.compile(rf"[A-Za-z0-9_-]{{{_TOKEN_LENGTH},}}")
_RUN_LIMIT = 128

# Header names that carry a credential. Signatures are not credentials (they are shown so a
# delivery can be checked again); idempotency keys only name a message.
_SECRET_NAMES = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_SECRET_WORDS = ("key", "token", "secret", "auth", "password", "passwd", "credential", "session", "cookie")
_NOT_SECRET = frozenset({"idempotency-key", "x-openrouter-idempotency-key"})


@functools.lru_cache(maxsize=1024)  # header names repeat: every delivery asks about the same few
def is_secret_header(name: str) -> bool:
    name = name.lower()
    if name in _SECRET_NAMES:
        return True
    if name in _NOT_SECRET:
        return False
    return any(word in name for word in _SECRET_WORDS)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if is_secret_header(k) else v) for k, v in headers.items()}


def strip_text(text: str, tokens: Iterable[str] = ()) -> str:
    """`text` with every callback URL of ours (and each known token) replaced."""
    for token in tokens:
        if token and token in text:
            text = text.replace(token, REDACTED)
    if "webhooks" in text.lower():
        text = _CALLBACK.sub(CALLBACK_PLACEHOLDER, text)
    return text


def strip_callbacks(value: Any, tokens: Iterable[str] = ()) -> Any:
    """A copy of a JSON value with no callback URL of ours in it. A top-level `callback_url`
    (the provider echoing what we sent) is dropped altogether."""
    known = tuple(t for t in tokens if t)
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "callback_url"}
    return _strip(value, known)


def _strip(value: Any, tokens: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return strip_text(value, tokens)
    if isinstance(value, dict):
        return {strip_text(k, tokens): _strip(v, tokens) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip(v, tokens) for v in value]
    return value


def find_token(value: Any, token_hash: str) -> str | None:
    """Our callback token wherever `value` (a provider's answer) quotes it, even bare, found by
    its SHA-256 hex digest; None when it is not there."""
    for text in _strings(value):
        for run in _RUN.finditer(text):
            word = run.group()
            if len(word) > _RUN_LIMIT:
                continue
            for start in range(len(word) - _TOKEN_LENGTH + 1):
                candidate = word[start : start + _TOKEN_LENGTH]
                if hashlib.sha256(candidate.encode()).hexdigest() == token_hash:
                    return candidate
    return None


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
