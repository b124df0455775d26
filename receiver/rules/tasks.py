"""The one transition function: what a delivery or poll answer does to a task (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PRE_SUBMIT", "RANK", "TERMINAL", "Transition", "is_terminal", "transition"]

TERMINAL = frozenset({"completed", "failed"})
# "submitting": the task row exists but the provider has not answered our submit yet.
# "unconfirmed": the submit's outcome is unknown (a timeout, a 5xx, an unreadable answer, a
# process killed mid-call): the provider may have created the task, so its row and callback
# token are kept until a delivery adopts it or its confirm window ends.
PRE_SUBMIT = frozenset({"submitting", "unconfirmed"})
RANK = {"submitting": -1, "unconfirmed": -1, "queued": 0, "in_progress": 1, "completed": 2, "failed": 2}

# Outcomes, as stored on deliveries and counted in metrics.
APPLIED = "applied"  # moved the task forward
UNCHANGED = "unchanged"  # the state we already hold (in_progress again): nothing to write
STALE = "stale"  # older than what we know (in_progress after completed): no change
DUPLICATE = "duplicate"  # same terminal status again: a duplicate in effect
ANOMALY = "anomaly"  # a terminal answer that disagrees with the recorded one: kept, not applied


def is_terminal(status: str) -> bool:
    return status in TERMINAL


@dataclass(slots=True)
class Transition:
    outcome: str
    status: str  # the task's status after this update
    video: dict[str, Any]  # the task's stored video object after this update
    became_terminal: bool = False


def transition(status: str, video: dict[str, Any], new_status: str, new_video: dict[str, Any]) -> Transition:
    """Decide what an authoritative update (new_status, new_video) does to a task.

    State only moves forward (queued < in_progress < completed|failed). A terminal result is
    written once: a later terminal answer with the same status is a duplicate in effect, one
    with another status an anomaly; neither changes the task.
    """
    if is_terminal(status):
        if not is_terminal(new_status):
            return Transition(STALE, status, video)
        if new_status == status:
            return Transition(DUPLICATE, status, video)
        return Transition(ANOMALY, status, video)
    if RANK[new_status] < RANK[status]:
        return Transition(STALE, status, video)
    if new_status == status:
        return Transition(UNCHANGED, status, video)
    merged = {**video, **new_video, "status": new_status}
    return Transition(APPLIED, new_status, merged, became_terminal=is_terminal(new_status))
