"""The rows the store hands out and takes in, shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Attempt",
    "AttemptRow",
    "CaptureOutcome",
    "CaptureRow",
    "CreateResult",
    "DeliveryResult",
    "DeliveryRow",
    "EventRow",
    "HistoryRow",
    "NewDelivery",
    "NewEvent",
    "NewTask",
    "OutboxJob",
    "OutboxRow",
    "OutboxStats",
    "Page",
    "PruneRun",
    "ReplayFilter",
    "SubscriptionRow",
    "TaskChange",
    "TaskRow",
    "TaskStats",
    "dedupe_base",
    "delivery_pk",
]


@dataclass(slots=True)
class TaskRow:
    pk: int
    video_id: str | None
    status: str
    video: dict[str, Any]
    created_at: float
    next_poll_at: float | None
    last_open_poll_at: float | None
    # What the ack path does not need to read (it selects only the fields above).
    model: str = ""
    callback_url: str | None = None
    updated_at: float = 0.0
    terminal_at: float | None = None
    resolved_by: str | None = None
    deliveries: int = 0
    duplicates: int = 0
    polls: int = 0
    anomalies: int = 0
    poll_failures: int = 0
    confirm_pending: bool = False
    expires_at: float | None = None
    token_hash: str | None = None  # of the task's callback token (the token itself is never kept)


@dataclass(slots=True)
class HistoryRow:
    completion: float  # seconds from submit to result
    terminal_at: float
    delivered: bool  # at least one delivery arrived for the task


@dataclass(frozen=True)
class TaskStats:
    by_state: dict[tuple[str, str | None], int]  # (status, resolved_by) -> tasks
    oldest_open_created_at: float | None


@dataclass(frozen=True)
class EventRow:
    pk: int
    id: str
    task_pk: int
    video_id: str
    type: str
    created_at: float
    data: dict[str, Any]


@dataclass(frozen=True)
class SubscriptionRow:
    pk: int
    id: str
    url: str
    events: list[str] | None  # None: every event type
    secret: str = field(repr=False)  # "" for a task's own callback_url: RECEIVER_CALLBACK_SECRET
    status: str = "active"  # active, paused, disabled, deleted
    task_pk: int | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    disabled_reason: str | None = None


@dataclass(frozen=True)
class AttemptRow:
    at: float
    status: int | None
    latency_ms: float
    error: str | None


@dataclass(frozen=True)
class OutboxRow:
    """One event to one subscriber: its state and every attempt so far."""

    pk: int
    event_id: str
    video_id: str
    subscription_id: str
    url: str
    replay_id: str | None
    status: str  # pending, delivered, failed, dead, cancelled
    attempts: int
    next_attempt_at: float | None
    created_at: float
    settled_at: float | None
    last_status: int | None
    last_error: str | None
    log: list[AttemptRow] = field(default_factory=list)
    leased_until: float | None = None  # a sender holds it (an attempt is being made) until then


@dataclass(frozen=True)
class OutboxJob:
    """A claimed send: the event, the subscriber, and how many attempts came before."""

    pk: int
    attempts: int
    event: EventRow
    subscription: SubscriptionRow


@dataclass(frozen=True)
class Attempt:
    """What one send attempt did, and what follows from it."""

    outbox_pk: int
    at: float
    status: int | None
    latency_ms: float
    error: str | None
    outcome: str  # delivered, retry, failed, dead
    next_attempt_at: float | None = None
    # Set when the attempt ends the subscription: why, as its disabled_reason shows it (its
    # pending sends are cancelled with it).
    disables_subscription: str | None = None


@dataclass(frozen=True)
class ReplayFilter:
    subscription_id: str | None = None
    video_id: str | None = None
    since: float | None = None
    until: float | None = None
    event_ids: list[str] | None = None


@dataclass(frozen=True)
class OutboxStats:
    by_status: dict[str, int]


@dataclass(frozen=True)
class NewTask:
    token_hash: str
    model: str
    request: dict[str, Any]
    callback_url: str | None
    idem_scope: str | None
    idem_key: str | None
    request_hash: str | None
    created_at: float
    expires_at: float | None
    # How long a key's first submit may stay "submitting", then "unconfirmed" (decide.on_submit_retry).
    orphan_after: float = 45.0
    confirm_window: float = 3600.0


@dataclass(frozen=True)
class CreateResult:
    state: str  # created, exists, in_flight, unconfirmed, mismatch
    pk: int | None = None
    task: TaskRow | None = None


@dataclass(slots=True)
class NewDelivery:
    """An authentic delivery, ready to store. `status`/`video` are its normalised update.

    `dedupe_key` names the message as the provider did (webhook-id, ...); `key` is what it is
    kept under, scoped: a delivery on a per-task URL repeats only one of the same task (its
    token hash), one on POST /webhooks only one verified by the same secret (`key_id`). The
    same webhook-id on two tasks is two deliveries. `legacy_key` is how a workspace delivery's
    copy was kept before keys were scoped (its secret unknown, under its video id instead): it
    is still a duplicate of that one."""

    dedupe_key: str
    route: str  # task or workspace
    token_hash: str | None
    video_id: str | None
    verified_by: str
    headers: dict[str, str]
    body: bytes = field(repr=False)
    event_type: str | None
    status: str | None
    video: dict[str, Any] | None
    actionable: bool
    needs_confirm: bool  # thin or unsigned: only our own GET may settle it
    received_at: float
    next_poll_at: float | None  # where an in_progress delivery pushes the task's next poll
    key_id: str | None = None  # fingerprint of the secret that verified it (None: unsigned)
    key: str = field(init=False, repr=False)
    legacy_key: str | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.route == "task" and self.token_hash is not None:
            self.key = f"t:{self.token_hash[:_SCOPE_HASH]} {self.dedupe_key}"
            self.legacy_key = None
        else:
            self.key = f"k:{self.key_id or '-'} {self.dedupe_key}"
            video_id = self.video_id or ""
            self.legacy_key = f"w:{len(video_id)}:{video_id} {self.dedupe_key}"


# Of a token hash (hex SHA-256) in a scoped key: 128 bits tell tasks apart and keep the key short.
_SCOPE_HASH = 32


def dedupe_base(key: str) -> str:
    """The provider's name for a message (`NewDelivery.dedupe_key`) from the key it is kept
    under (`NewDelivery.key`, `legacy_key`, or a key kept before scoping, unchanged)."""
    if key.startswith(("t:", "k:")):
        return key.partition(" ")[2] or key
    if key.startswith("w:"):
        length, sep, rest = key[2:].partition(":")
        if sep and length.isascii() and length.isdigit() and len(rest) > int(length):
            return rest[int(length) + 1 :]
    return key


@dataclass(slots=True)
class DeliveryResult:
    id: str
    duplicate: bool
    outcome: str
    task: TaskRow | None
    terminal: bool = False  # this delivery recorded the task's terminal result
    sends: int = 0  # outbound sends that result queued


@dataclass(slots=True)
class DeliveryRow:
    pk: int
    id: str
    dedupe_key: str
    task_pk: int | None
    video_id: str | None
    route: str
    verified_by: str
    headers: dict[str, str]
    body: bytes
    event_type: str | None
    status: str | None
    outcome: str
    repeats: int
    received_at: float
    last_seen_at: float
    pruned: bool = False  # retention emptied its body and headers; the row and its key stay


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    has_more: bool


@dataclass(frozen=True)
class NewEvent:
    """A terminal result's one event, as the core shaped it."""

    id: str
    type: str
    video_id: str
    created_at: float
    data: dict[str, Any]
    # Result files to keep, (variant, url): a capture row each, in the same transaction.
    files: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class TaskChange:
    """What one write does to one task row: columns set (only those whose values change),
    counters added to, and the event a terminal result records. Decided by receiver.rules.decide; a
    backend writes it as one UPDATE (none when empty) plus the event and its outbox rows."""

    sets: dict[str, Any] = field(default_factory=dict)
    adds: dict[str, int] = field(default_factory=dict)
    event: NewEvent | None = None

    def __bool__(self) -> bool:
        return bool(self.sets or self.adds or self.event)


@dataclass(slots=True)
class CaptureRow:
    """One result file to keep: pending (due at next_attempt_at; a claim moves that to the end
    of its lease), kept (size, sha256, content type, key in the media store) or failed (error)."""

    pk: int
    task_pk: int
    video_id: str
    variant: str
    url: str
    status: str
    attempts: int
    next_attempt_at: float | None
    created_at: float
    settled_at: float | None = None
    size: int | None = None
    sha256: str | None = None
    content_type: str | None = None
    key: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class CaptureOutcome:
    """What one capture attempt came to: kept, failed (for good), or pending again at
    next_attempt_at (retry)."""

    pk: int
    status: str
    at: float
    error: str | None = None
    next_attempt_at: float | None = None
    size: int | None = None
    sha256: str | None = None
    content_type: str | None = None
    key: str | None = None


def delivery_pk(delivery_id: str) -> int | None:
    """dlv_<pk> -> pk (None for anything else)."""
    digits = delivery_id[4:] if delivery_id.startswith("dlv_") else ""
    return int(digits) if digits.isascii() and digits.isdigit() and len(digits) < 19 else None


@dataclass(frozen=True)
class PruneRun:
    """The last whole pruning pass, as the process that ran it recorded it (None: none yet)."""

    at: float | None = None
    took: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
