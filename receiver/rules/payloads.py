"""Normalise every accepted delivery payload shape into one VideoUpdate (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from receiver.errors import PayloadError
from receiver.rules.ids import valid_video_id

__all__ = ["PayloadError", "VideoUpdate", "normalise", "normalise_status"]

STATUSES = ("queued", "in_progress", "completed", "failed")

# Provider vocabularies seen in the field (Replicate, Runway, Kling, OpenAI...), folded into our
# four statuses. Any other word counts as still running: polling settles it, and a provider that
# invents a status must never make us forget a task it has created.
_STATUS_MAP = {
    "queued": "queued",
    "pending": "queued",
    "submitted": "queued",
    "starting": "queued",
    "in_progress": "in_progress",
    "running": "in_progress",
    "processing": "in_progress",
    "generating": "in_progress",
    "completed": "completed",
    "succeeded": "completed",
    "succeed": "completed",
    "success": "completed",
    "done": "completed",
    "failed": "failed",
    "error": "failed",
    "expired": "failed",
    "cancelled": "failed",
    "canceled": "failed",
    "timeout": "failed",
}

# Event types we act on, and the status each one means.
_EVENT_STATUS = {
    "video.completed": "completed",
    "video.failed": "failed",
    "video.generation.completed": "completed",
    "video.generation.failed": "failed",
    "video.generation.cancelled": "failed",
    "video.generation.expired": "failed",
}
_FAILURE_CODES = {"video.generation.cancelled": "cancelled", "video.generation.expired": "expired"}
_MAX_ID = 200


@dataclass(slots=True)
class VideoUpdate:
    """What one delivery (or poll answer) says about one video."""

    video_id: str | None
    status: str | None  # one of STATUSES; None when the payload is thin
    video: dict[str, Any] | None  # provider fields to merge into the stored object
    event_id: str | None = None
    event_type: str | None = None
    actionable: bool = True  # False: an event type we store but do not act on

    @property
    def thin(self) -> bool:
        return self.actionable and self.status is None


def normalise_status(value: object) -> str:
    if not isinstance(value, str):
        raise PayloadError("status must be a string")
    return _STATUS_MAP.get(value.strip().lower(), "in_progress")


def _video_id(value: object, where: str) -> str:
    if not valid_video_id(value):
        raise PayloadError(f"{where} must be a video id (1 to 200 printable ASCII characters)")
    assert isinstance(value, str)
    return value


def _check_common(obj: dict[str, Any], where: str) -> None:
    created = obj.get("created_at")
    if created is not None and (isinstance(created, bool) or not isinstance(created, int | float | str)):
        raise PayloadError(f"{where}created_at must be a number or a string")
    error = obj.get("error")
    if error is not None and not isinstance(error, dict | str):
        raise PayloadError(f"{where}error must be an object or a string")
    for name in ("content", "metadata", "parameters"):
        value = obj.get(name)
        if value is not None and not isinstance(value, dict):
            raise PayloadError(f"{where}{name} must be an object")


def _from_video(obj: dict[str, Any], where: str) -> VideoUpdate:
    video_id = _video_id(obj.get("id"), f"{where}id")
    _check_common(obj, where)
    status = normalise_status(obj["status"]) if "status" in obj else None
    video = {k: v for k, v in obj.items() if k not in ("status", "object")}
    if status is not None:
        raw = obj["status"]
        video["status"] = status
        if raw != status:
            video.setdefault("provider_status", raw)
    return VideoUpdate(video_id=video_id, status=status, video=video if status else None)


def normalise(body: object) -> VideoUpdate:
    """Turn a parsed JSON body into a VideoUpdate, or raise PayloadError."""
    if not isinstance(body, dict):
        raise PayloadError("body must be a JSON object")
    event_type = body.get("type")
    if "data" in body or body.get("object") == "event":
        # An event envelope: OpenAI-style or OpenRouter-style.
        if not isinstance(event_type, str) or not event_type:
            raise PayloadError("an event must have a string type")
        data = body.get("data")
        if not isinstance(data, dict):
            raise PayloadError("an event's data must be an object")
        event_id = body.get("id")
        if event_id is not None and (not isinstance(event_id, str) or len(event_id) > _MAX_ID):
            raise PayloadError("an event's id must be a string")
        _check_common(body, "")
        if event_type not in _EVENT_STATUS:
            video_id = data.get("id")
            if video_id is not None:
                _video_id(video_id, "data.id")
            return VideoUpdate(
                video_id=video_id,
                status=None,
                video=None,
                event_id=event_id,
                event_type=event_type,
                actionable=False,
            )
        inner = _from_video(data, "data.")
        status = _EVENT_STATUS[event_type]
        video = inner.video
        if inner.status is not None and inner.status != status and inner.status in ("completed", "failed"):
            raise PayloadError(f"event type {event_type} disagrees with data.status")
        if inner.status is not None and video is not None:
            # The event type is the authority on the terminal state it announces.
            video = {**video, "status": status}
            if event_type in _FAILURE_CODES:
                message = data.get("error") if isinstance(data.get("error"), str) else None
                video["error"] = {
                    "code": _FAILURE_CODES[event_type],
                    "message": message or event_type.rsplit(".", 1)[1],
                }
            elif status == "failed" and isinstance(data.get("error"), str):
                video["error"] = {"code": "failed", "message": data["error"]}
        return VideoUpdate(
            video_id=inner.video_id,
            status=status if inner.status is not None else None,
            video=video,
            event_id=event_id,
            event_type=event_type,
        )
    if isinstance(event_type, str) and event_type and "id" not in body:
        raise PayloadError("an event must carry a data object")
    if "id" not in body:
        raise PayloadError("body names no video")
    update = _from_video(body, "")
    if update.status is None:
        raise PayloadError("a video object must have a status")
    return update
