"""Persistence behind one interface: the Store protocol, its records, and open_store(url)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "Attempt",
    "AttemptRow",
    "CreateResult",
    "Decide",
    "DeliveryResult",
    "DeliveryRow",
    "EventRow",
    "HistoryRow",
    "NewDelivery",
    "NewTask",
    "OutboxJob",
    "OutboxRow",
    "OutboxStats",
    "Page",
    "ReplayFilter",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "SubscriptionRow",
    "TaskRow",
    "TaskStats",
    "UnknownCursor",
    "UnknownToken",
    "WrongVideo",
    "open_store",
]


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class StoreUnavailable(StoreError):
    """The store cannot take writes right now (disk full, locked, closed)."""


class UnknownToken(StoreError):
    """No task owns this callback token."""


class WrongVideo(StoreError):
    """A per-task delivery names a video other than the task's."""


class UnknownCursor(StoreError):
    """A list's `after` names no row."""


class TransitionLike(Protocol):
    @property
    def outcome(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def video(self) -> dict[str, Any]: ...
    @property
    def became_terminal(self) -> bool: ...


# The one transition function (receiver.tasks.transition), handed to the store so that every
# write path (submit answer, delivery, poll, replay) applies the same rules inside its transaction.
Decide = Callable[[str, dict[str, Any], str, dict[str, Any]], TransitionLike]


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
    disable_subscription: bool = False


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


@dataclass(frozen=True)
class CreateResult:
    state: str  # created, exists, in_flight, mismatch
    pk: int | None = None
    task: TaskRow | None = None


@dataclass(slots=True)
class NewDelivery:
    """An authentic delivery, ready to store. `status`/`video` are its normalised update."""

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


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    has_more: bool


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def create_task(self, new: NewTask) -> CreateResult: ...
    async def finish_submit(
        self,
        pk: int,
        video_id: str,
        status: str,
        video: dict[str, Any],
        now: float,
        next_poll_at: float,
    ) -> TaskRow: ...
    async def abandon_submit(self, pk: int) -> bool: ...

    async def record_delivery(self, delivery: NewDelivery) -> DeliveryResult: ...
    async def reapply_delivery(
        self,
        delivery_id: str,
        status: str | None,
        video: dict[str, Any] | None,
        needs_confirm: bool,
        now: float,
    ) -> DeliveryResult: ...
    async def record_poll(
        self,
        pk: int,
        status: str | None,
        video: dict[str, Any] | None,
        now: float,
        next_poll_at: float | None,
        *,
        resolved_by: str | None = None,
        failed: bool = False,
    ) -> TaskRow: ...

    async def task_by_video(self, video_id: str) -> TaskRow | None: ...
    async def task_by_pk(self, pk: int) -> TaskRow | None: ...
    async def list_tasks(self, status: str | None, limit: int, after: str | None) -> Page: ...
    async def list_deliveries(self, video_id: str | None, limit: int, after: str | None) -> Page: ...
    async def get_delivery(self, delivery_id: str) -> DeliveryRow | None: ...
    async def unmatched_deliveries(self, video_id: str) -> list[DeliveryRow]: ...
    async def claim_due(self, now: float, limit: int, lease: float) -> list[TaskRow]: ...
    async def next_due(self) -> float | None: ...
    async def model_history(self, model: str, limit: int) -> list[HistoryRow]: ...
    async def task_stats(self) -> TaskStats: ...

    # -- fan-out ---------------------------------------------------------------------------------
    async def create_subscription(
        self, url: str, events: list[str] | None, secret: str, now: float
    ) -> SubscriptionRow: ...
    async def get_subscription(self, subscription_id: str) -> SubscriptionRow | None: ...
    async def list_subscriptions(self, limit: int, after: str | None) -> Page: ...
    async def set_subscription_status(
        self, subscription_id: str, status: str, now: float, reason: str | None = None
    ) -> SubscriptionRow | None: ...
    async def claim_outbox(
        self, now: float, limit: int, per_subscription: int, busy: dict[int, int], lease: float
    ) -> list[OutboxJob]: ...
    async def record_attempt(self, attempt: Attempt) -> None: ...
    async def next_outbox_due(self) -> float | None: ...
    async def queue_replay(self, selection: ReplayFilter, now: float, replay_id: str) -> tuple[int, int]: ...
    async def replay_progress(self, replay_id: str) -> dict[str, int]: ...
    async def list_events(
        self, video_id: str | None, event_type: str | None, limit: int, after: str | None
    ) -> Page: ...
    async def get_event(self, event_id: str) -> EventRow | None: ...
    async def event_sends(self, event_pk: int) -> list[OutboxRow]: ...
    async def list_outbox(
        self, status: str, subscription_id: str | None, limit: int, after: int | None
    ) -> Page: ...
    async def events_after(self, event_id: str | None, limit: int) -> list[EventRow]: ...
    async def outbox_stats(self) -> OutboxStats: ...


def open_store(url: str, *, decide: Decide) -> Store:
    """The store for a RECEIVER_DATABASE_URL (call `await store.open()` before use)."""
    if url.startswith("sqlite://"):
        from store.sqlite import SQLiteStore

        path = url[len("sqlite://") :]
        if path.startswith("/"):
            path = path[1:]  # sqlite:///rel.db -> rel.db; sqlite:////abs.db -> /abs.db
        return SQLiteStore(path or ":memory:", decide=decide)
    raise ValueError(f"unsupported store URL scheme: {url.split(':', 1)[0]!r}")
