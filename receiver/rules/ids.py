"""One parser for every id a client sends us (path, query, header), the minting of our random
ids, and the page-size bounds.

Ids are judged by shape before any lookup, so whatever the encoding (non-ASCII digits such as
`²`, lone surrogates, control characters) the answer is a 400 naming the parameter, never a
500 from deeper down. A well-shaped id that names nothing is the caller's 404 (or, as a list's
`after`, a 400).
"""

from __future__ import annotations

import re
import secrets

from receiver.errors import InvalidRequest

__all__ = [
    "DEFAULT_LIMIT",
    "KINDS",
    "MAX_LIMIT",
    "new_id",
    "parse_id",
    "valid_video_id",
]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

# A provider's video id: printable ASCII without spaces or slashes (it goes into URL paths),
# at most 200 characters. re.ASCII keeps `\d`/`\w` from matching other scripts' digits.
_VIDEO = re.compile(r"[!-.0-~]{1,200}", re.ASCII)
# Our own ids: a prefix and what the store mints after it (pks in decimal, random ids in hex).
KINDS: dict[str, re.Pattern[str]] = {
    "video": _VIDEO,
    "delivery": re.compile(r"dlv_[0-9]{1,18}", re.ASCII),
    "send": re.compile(r"snd_[0-9]{1,18}", re.ASCII),
    "event": re.compile(r"evt_[0-9a-zA-Z]{1,64}", re.ASCII),
    "subscription": re.compile(r"sub_[0-9a-zA-Z]{1,64}", re.ASCII),
    "replay": re.compile(r"rpl_[0-9a-zA-Z]{1,64}", re.ASCII),
}


# Our random ids: a prefix and 24 hex digits (96 bits), which KINDS accepts.
_MINTED = {"event": "evt_", "subscription": "sub_", "replay": "rpl_"}


def new_id(kind: str) -> str:
    """A new random id of `kind` (event, subscription or replay)."""
    return _MINTED[kind] + secrets.token_hex(12)


def valid_video_id(value: object) -> bool:
    return isinstance(value, str) and _VIDEO.fullmatch(value) is not None


def parse_id(kind: str, value: object, param: str = "id") -> str:
    """`value` if it has the shape of a `kind` id, else InvalidRequest naming `param`."""
    pattern = KINDS[kind]
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise InvalidRequest(f"{param} is not a valid {kind} id", param=param, code="invalid_id")
    return value
