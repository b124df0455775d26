"""The transition function: forward only, terminal once, anomalies kept apart."""

from __future__ import annotations

import pytest

from receiver.rules.tasks import transition


@pytest.mark.parametrize(
    ("current", "new", "outcome", "after", "became_terminal"),
    [
        ("submitting", "queued", "applied", "queued", False),
        ("submitting", "completed", "applied", "completed", True),
        ("queued", "in_progress", "applied", "in_progress", False),
        ("queued", "completed", "applied", "completed", True),
        ("queued", "failed", "applied", "failed", True),
        ("in_progress", "in_progress", "unchanged", "in_progress", False),
        ("queued", "queued", "unchanged", "queued", False),
        ("in_progress", "queued", "stale", "in_progress", False),
        ("in_progress", "completed", "applied", "completed", True),
        ("completed", "in_progress", "stale", "completed", False),
        ("completed", "queued", "stale", "completed", False),
        ("completed", "completed", "duplicate", "completed", False),
        ("failed", "failed", "duplicate", "failed", False),
        ("completed", "failed", "anomaly", "completed", False),
        ("failed", "completed", "anomaly", "failed", False),
    ],
)
def test_transition_table(current: str, new: str, outcome: str, after: str, became_terminal: bool) -> None:
    result = transition(current, {"status": current, "keep": 1}, new, {"status": new, "extra": 2})
    assert (result.outcome, result.status, result.became_terminal) == (outcome, after, became_terminal)
    if outcome == "applied":
        assert result.video == {"status": new, "keep": 1, "extra": 2}
    else:
        assert result.video == {"status": current, "keep": 1}
