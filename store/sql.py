"""The outbox's rules as SQL, written once: each backend passes only its dialect's piece.

Which subscriptions an event is sent to is decided in the statement that records the event (the
transactional outbox: "recorded but never queued" cannot happen), so the rule has to be SQL; it
is written here once, and each backend supplies only how its JSON array column is searched.
"""

from __future__ import annotations

__all__ = ["OWN_OR_GLOBAL", "subscribed"]

# A subscription named for a replay: a global one, or the event's task's own (callback_url).
OWN_OR_GLOBAL = "(s.task_pk IS NULL OR s.task_pk = e.task_pk)"


def subscribed(holds_type: str) -> str:
    """Which subscriptions `s` an event `e` (with its task_pk and type) is sent to: live ones
    (a paused one holds its sends), either the event's task's own or a global one whose event
    filter is empty or names the event's type. `holds_type` is the dialect's test that the JSON
    array `s.events` holds `e.type`."""
    return (
        "s.status IN ('active', 'paused') AND (s.task_pk = e.task_pk"
        f" OR (s.task_pk IS NULL AND (s.events IS NULL OR {holds_type})))"
    )
