"""How stored rows are shown by the /v1 routes (tasks, deliveries, subscriptions, events, sends),
and the list page every list answers."""

from __future__ import annotations

import base64
import logging
from typing import Any

from receiver.outbound.addresses import redact_url
from receiver.rules import jsonpolicy
from receiver.rules.records import CaptureRow, DeliveryRow, EventRow, OutboxRow, SubscriptionRow, TaskRow
from receiver.rules.redact import redact_headers, strip_callbacks, strip_text
from receiver.secrets_at_rest import SecretBox

log = logging.getLogger("receiver.routes.views")


def file_view(row: CaptureRow) -> dict[str, Any]:
    return {
        "variant": row.variant,
        "status": row.status,
        "size": row.size,
        "sha256": row.sha256,
        "content_type": row.content_type,
        "attempts": row.attempts,
        "error": row.error,
        "kept_at": int(row.settled_at) if row.status == "kept" and row.settled_at is not None else None,
    }


def task_view(
    task: TaskRow, request: dict[str, Any] | None = None, files: list[CaptureRow] | None = None
) -> dict[str, Any]:
    """The video object we answer with: the provider's fields plus our `receiver` block."""
    # Rows stored before the provider's echo was stripped on the way in are stripped here too.
    video: dict[str, Any] = strip_callbacks(task.video)
    video.pop("provider_status", None)
    video.update(id=task.video_id, object="video", status=task.status, model=video.get("model") or task.model)
    if request is not None and "prompt" not in video:
        video["prompt"] = request.get("prompt")
    video.setdefault("created_at", int(task.created_at))
    video["receiver"] = {
        "resolved_by": task.resolved_by,
        "deliveries": task.deliveries,
        "duplicates": task.duplicates,
        "polls": task.polls,
        "anomalies": task.anomalies,
        "submitted_at": int(task.created_at),
        "terminal_at": int(task.terminal_at) if task.terminal_at is not None else None,
        "next_poll_at": int(task.next_poll_at) if task.next_poll_at is not None else None,
        "files": [file_view(f) for f in files or ()],
    }
    return video


def delivery_view(row: DeliveryRow) -> dict[str, Any]:
    """A stored delivery as received, minus our callback URL and any credential header. A body
    outside the JSON policy (kept as received) is shown as text (base64 when not UTF-8), never
    a failed read. A pruned one keeps its row and key but no body or headers."""
    body: Any
    if row.pruned:
        body, encoding = None, "pruned"
    else:
        body, encoding = _shown_body(row.body)
    return {
        "id": row.id,
        "object": "delivery",
        "video_id": row.video_id,
        "route": row.route,
        "received_at": int(row.received_at),
        "last_seen_at": int(row.last_seen_at),
        "verified_by": row.verified_by,
        "dedupe_key": row.dedupe_key,
        "event_type": row.event_type,
        "status": row.status,
        "outcome": row.outcome,
        "repeats": row.repeats,
        "headers": redact_headers(row.headers),
        "body": body,
        "body_encoding": encoding,
    }


def _shown_body(raw: bytes) -> tuple[Any, str]:
    try:
        return strip_callbacks(jsonpolicy.loads(raw)), "json"
    except jsonpolicy.JSONPolicyError:
        try:
            return strip_text(raw.decode("utf-8")), "text"
        except UnicodeDecodeError:
            return base64.b64encode(strip_text(raw.decode("latin-1")).encode("latin-1")).decode(), "base64"


def list_body(data: list[dict[str, Any]], has_more: bool, key: str = "id") -> dict[str, Any]:
    """A list page. first_id and last_id are OpenAI's: its SDK pages on last_id. `key` names the
    field of each item that `after` takes."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0][key] if data else None,
        "last_id": data[-1][key] if data else None,
        "has_more": has_more,
    }


def subscription_view(row: SubscriptionRow, *, secret: SecretBox | None = None) -> dict[str, Any]:
    """The subscription as reads show it; with `secret` (the box that opens it), its secret too."""
    view: dict[str, Any] = {
        "id": row.id,
        "object": "subscription",
        "url": redact_url(row.url),
        "events": row.events,
        "status": row.status,
        "created_at": int(row.created_at),
        "disabled_reason": row.disabled_reason,
    }
    if secret is not None:
        view["secret"] = secret.open_secret(row.secret)
    return view


def event_view(row: EventRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "event",
        "type": row.type,
        "created_at": int(row.created_at),
        "data": strip_callbacks(row.data),
    }


def send_view(row: OutboxRow) -> dict[str, Any]:
    return {
        "id": f"snd_{row.pk}",
        "object": "send",
        "event_id": row.event_id,
        "video_id": row.video_id,
        "subscription_id": row.subscription_id,
        "replay_id": row.replay_id,
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": int(row.next_attempt_at) if row.next_attempt_at is not None else None,
        "settled_at": int(row.settled_at) if row.settled_at is not None else None,
        "last_status": row.last_status,
        "last_error": row.last_error,
        "attempt_log": [
            {"at": int(a.at), "status": a.status, "latency_ms": round(a.latency_ms, 1), "error": a.error}
            for a in row.log
        ],
    }
