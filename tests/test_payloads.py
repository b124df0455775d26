"""Every accepted payload shape normalises to one VideoUpdate; every bad one is a PayloadError."""

from __future__ import annotations

from typing import Any

import pytest

from receiver.rules.payloads import PayloadError, normalise, normalise_status

VIDEO = {
    "id": "video_1",
    "object": "video",
    "status": "completed",
    "model": "m",
    "prompt": "p",
    "created_at": 1,
    "content": {"video_url": "https://x/v.mp4"},
}


@pytest.mark.parametrize(
    ("body", "video_id", "status", "thin", "actionable", "event_type"),
    [
        (VIDEO, "video_1", "completed", False, True, None),
        ({**VIDEO, "status": "in_progress"}, "video_1", "in_progress", False, True, None),
        ({"id": "video_1", "status": "succeeded"}, "video_1", "completed", False, True, None),
        ({"id": "video_1", "status": "running"}, "video_1", "in_progress", False, True, None),
        (
            {"id": "evt_1", "object": "event", "type": "video.completed", "created_at": 1, "data": VIDEO},
            "video_1",
            "completed",
            False,
            True,
            "video.completed",
        ),
        (
            {
                "id": "evt_1",
                "object": "event",
                "type": "video.failed",
                "created_at": 1,
                "data": {**VIDEO, "status": "failed", "error": {"code": "x", "message": "y"}},
            },
            "video_1",
            "failed",
            False,
            True,
            "video.failed",
        ),
        (
            {
                "id": "evt_1",
                "object": "event",
                "type": "video.completed",
                "created_at": 1,
                "data": {"id": "video_1"},
            },
            "video_1",
            None,
            True,
            True,
            "video.completed",
        ),
        (
            {
                "type": "video.generation.completed",
                "created_at": "2026-04-24T12:00:00.000Z",
                "data": {"id": "abc", "status": "completed", "generation_id": None, "model": None},
            },
            "abc",
            "completed",
            False,
            True,
            "video.generation.completed",
        ),
        (
            {
                "type": "video.generation.expired",
                "created_at": "2026-04-24T12:00:00.000Z",
                "data": {"id": "abc", "status": "expired", "error": "Job exceeded maximum time to live"},
            },
            "abc",
            "failed",
            False,
            True,
            "video.generation.expired",
        ),
        (
            {
                "type": "video.generation.cancelled",
                "created_at": "2026-04-24T12:00:00.000Z",
                "data": {"id": "abc", "status": "cancelled"},
            },
            "abc",
            "failed",
            False,
            True,
            "video.generation.cancelled",
        ),
        (
            {"id": "evt_2", "object": "event", "type": "video.progress", "data": {"id": "video_1"}},
            "video_1",
            None,
            False,
            False,
            "video.progress",
        ),
        (
            {"id": "evt_3", "object": "event", "type": "something.new", "data": {}},
            None,
            None,
            False,
            False,
            "something.new",
        ),
    ],
)
def test_accepted_shapes(
    body: dict[str, Any],
    video_id: str | None,
    status: str | None,
    thin: bool,
    actionable: bool,
    event_type: str | None,
) -> None:
    update = normalise(body)
    assert (update.video_id, update.status, update.thin, update.actionable, update.event_type) == (
        video_id,
        status,
        thin,
        actionable,
        event_type,
    )


def test_openrouter_expiry_keeps_its_reason() -> None:
    update = normalise(
        {
            "type": "video.generation.expired",
            "created_at": "2026-04-24T12:00:00Z",
            "data": {"id": "abc", "status": "expired", "error": "Job exceeded maximum time to live"},
        }
    )
    assert update.video is not None
    assert update.video["error"] == {"code": "expired", "message": "Job exceeded maximum time to live"}


@pytest.mark.parametrize(
    "body",
    [
        [],
        "x",
        1,
        None,
        {},
        {"id": 5, "status": "completed"},
        {"id": "", "status": "completed"},
        {"id": "video_1"},
        {"id": "video_1", "status": 3},
        {"id": "video_1", "status": None},
        {"id": "video_1", "status": "completed", "created_at": True},
        {"id": "video_1", "status": "completed", "content": []},
        {"id": "video_1", "status": "completed", "error": 5},
        {"object": "event", "type": "video.completed", "data": "x"},
        {"object": "event", "type": "video.completed", "data": {}},
        {"object": "event", "type": "video.completed", "data": {"id": 1}},
        {"object": "event", "data": {"id": "video_1"}},
        {"object": "event", "type": 5, "data": {"id": "video_1"}},
        {"object": "event", "id": 7, "type": "video.completed", "data": {"id": "video_1"}},
        {"type": "video.completed"},
        {"type": "video.completed", "data": {"id": "video_1", "status": "failed"}},
        {"type": "video.progress", "data": {"id": 3}},
    ],
)
def test_rejected_shapes(body: object) -> None:
    with pytest.raises(PayloadError):
        normalise(body)


@pytest.mark.parametrize(
    ("word", "status"),
    [
        # Ours, and OpenAI's.
        ("queued", "queued"),
        ("in_progress", "in_progress"),
        ("completed", "completed"),
        ("failed", "failed"),
        # Not started yet.
        ("pending", "queued"),
        ("submitted", "queued"),  # Kling
        ("starting", "queued"),  # Replicate: nothing has started
        ("PENDING", "queued"),  # Runway
        # Running.
        ("processing", "in_progress"),
        ("running", "in_progress"),
        ("RUNNING", "in_progress"),
        ("generating", "in_progress"),
        # Done.
        ("succeeded", "completed"),
        ("SUCCEEDED", "completed"),
        ("success", "completed"),
        ("succeed", "completed"),  # Kling
        ("done", "completed"),
        (" Completed ", "completed"),
        # Ended without a result.
        ("error", "failed"),
        ("canceled", "failed"),
        ("cancelled", "failed"),
        ("expired", "failed"),
        # Any other word: still running, polled until it says more.
        ("bogus", "in_progress"),
        ("rendering_frames", "in_progress"),
        ("", "in_progress"),
    ],
)
def test_normalise_status(word: str, status: str) -> None:
    assert normalise_status(word) == status
    assert normalise({"id": "video_1", "status": word}).status == status


@pytest.mark.parametrize("value", [None, 3, True, ["completed"], {"status": "completed"}])
def test_a_status_that_is_not_a_string_is_refused(value: object) -> None:
    with pytest.raises(PayloadError):
        normalise_status(value)
