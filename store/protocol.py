"""The Store protocol: what every backend offers the service."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from receiver.rules.records import (
    Attempt,
    CaptureOutcome,
    CaptureRow,
    CreateResult,
    DeliveryResult,
    DeliveryRow,
    EventRow,
    HistoryRow,
    NewDelivery,
    NewTask,
    OutboxJob,
    OutboxRow,
    OutboxStats,
    Page,
    PruneRun,
    ReplayFilter,
    SubscriptionRow,
    TaskRow,
    TaskStats,
)

__all__ = ["Store"]


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call `listener(topic)` when another process commits news: "tasks" (something may be
        due to poll), "outbox" (sends to make), "events" (new events to stream)."""

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
    async def unconfirm_submit(self, pk: int, now: float) -> TaskRow | None:
        """Our submit's outcome is unknown: keep the task as "unconfirmed" (decide.on_submit_unknown).
        The task as it now reads (a delivery may have adopted it already); None if it is gone."""

    async def sweep_submits(self, orphan_before: float, expire_before: float, limit: int) -> tuple[int, int]:
        """Tasks "submitting" since before `orphan_before` become "unconfirmed"; "unconfirmed"
        ones since before `expire_before` that no delivery adopted are deleted (at most `limit`
        of each). Returns (unconfirmed, deleted)."""

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
    async def open_tasks(self, model: str, limit: int) -> list[float]:
        """created_at of the model's newest `limit` tasks with no terminal result, newest first."""

    async def advance_polls(self, model: str, first: float, now: float) -> int:
        """Pull the next poll of each of the model's open tasks in to `first` seconds after its
        submit (`now` at the earliest), never pushing one back. Returns how many moved."""

    async def task_stats(self) -> TaskStats:
        """Tasks by (status, resolved_by) and the oldest open one's created_at, read from counts
        kept as rows change (a fixed number of rows) and one index probe: flat in the store's size."""

    async def fold_counts(self) -> None:
        """Fold the count changes writers appended into the kept counts, so reads stay a fixed
        number of rows (PostgreSQL; SQLite keeps its counts in place). Any process may call it."""

    # -- fan-out ---------------------------------------------------------------------------------
    async def create_subscription(
        self, url: str, events: list[str] | None, secret: str, now: float, *, limit: int | None = None
    ) -> SubscriptionRow:
        """With `limit`: OverLimit (nothing written) when `limit` subscriptions not deleted exist
        already, counted in the transaction that writes; a task's own callback_url not counted."""

    async def get_subscription(self, subscription_id: str) -> SubscriptionRow | None: ...
    async def list_subscriptions(self, limit: int, after: str | None) -> Page: ...
    async def subscription_secrets(self, after_pk: int, limit: int) -> list[tuple[int, str, str]]:
        """(pk, url, secret) of subscriptions (not a task's own callback_url), by pk after
        `after_pk`, at most `limit`: what receiver.secrets_at_rest seals and rotates."""
        ...

    async def set_subscription_secrets(self, changes: list[tuple[int, str, str]]) -> None:
        """Write each (pk, url, secret) in one transaction, leaving no copy of the old values in
        the file where the backend can help it."""
        ...

    async def set_subscription_status(
        self, subscription_id: str, status: str, now: float, reason: str | None = None
    ) -> SubscriptionRow | None: ...
    async def claim_outbox(
        self,
        now: float,
        limit: int,
        caps: Mapping[int, int],
        default_cap: int,
        lease: float,
        *,
        settle: Sequence[Attempt] = (),
    ) -> list[OutboxJob]:
        """Due sends, leased until now + lease, at most `caps[subscription pk]` (`default_cap`
        for one not in `caps`) in flight per subscriber counting every process's leases. The
        attempts in `settle` are recorded first, in the same transaction (as record_attempt
        does each), so that one commit both settles the sends that ended and takes the next."""

    async def record_attempt(self, attempt: Attempt) -> None: ...
    async def next_outbox_due(self) -> float | None: ...
    async def queue_replay(
        self, selection: ReplayFilter, now: float, replay_id: str, *, max_sends: int | None = None
    ) -> tuple[int, int]:
        """(events selected, sends queued). With `max_sends`: OverLimit (nothing written) when it
        would queue more, counted (up to max_sends + 1) in the transaction that writes."""

    async def replay_progress(self, replay_id: str) -> dict[str, int]: ...
    async def replay_failures(self, replay_id: str) -> tuple[int, str | None]:
        """The replay's sends that failed and wait to be tried again, and its latest failed
        attempt's error ("answered 500" when the subscriber answered), if any."""

    async def list_events(
        self, video_id: str | None, event_type: str | None, limit: int, after: str | None
    ) -> Page: ...
    async def get_event(self, event_id: str) -> EventRow | None: ...
    async def event_sends(self, event_pk: int) -> list[OutboxRow]: ...
    async def list_outbox(
        self, status: str, subscription_id: str | None, limit: int, after: int | None
    ) -> Page: ...
    async def events_after(self, event_id: str | None, limit: int) -> list[EventRow]: ...
    async def recent_sends(
        self, subscription_pks: list[int], first_event_pk: int, limit: int
    ) -> dict[int, list[OutboxRow]]:
        """Per subscription, its newest `limit` sends (first and replayed, with their attempts)
        of the events from `first_event_pk` on: read through an index, whatever the outbox's size."""

    async def dead_letter_counts(self, subscription_pks: list[int], limit: int) -> dict[int, int]:
        """Per subscription, its dead letters, counted up to `limit` + 1 (more: more than `limit`)."""

    async def outbox_stats(self) -> OutboxStats: ...

    # -- kept result files -------------------------------------------------------------------
    async def claim_captures(self, now: float, limit: int, lease: float) -> list[CaptureRow]: ...
    async def renew_capture(self, pk: int, until: float) -> None: ...
    async def finish_capture(self, outcome: CaptureOutcome) -> None: ...
    async def next_capture_due(self) -> float | None: ...
    async def captures_of(self, task_pks: list[int]) -> dict[int, list[CaptureRow]]: ...
    async def capture_stats(self) -> dict[str, int]: ...

    # -- retention (receiver.workers.pruner decides the cut-offs; these run one short batch each) -------
    async def take_lease(self, name: str, holder: str, now: float, until: float) -> bool:
        """Hold the lease `name` until `until` if it is free, expired, or `holder`'s already."""

    async def release_lease(self, name: str, holder: str, run: PruneRun | None = None) -> None:
        """Let go of `holder`'s lease, recording `run` (a whole pass) when given."""

    async def last_prune(self) -> PruneRun: ...
    async def prune_bodies(self, ended_before: float, now: float, limit: int) -> tuple[dict[str, int], bool]:
        """One batch: for up to `limit` tasks that ended before `ended_before`, delete their
        events, sends and attempts and empty their deliveries' bodies and headers (the rows and
        keys stay); the same for up to `limit` deliveries naming no task received before then.
        (rows by table, whether more may be left)."""

    async def prune_tasks(self, ended_before: float, limit: int) -> tuple[dict[str, int], bool]:
        """One batch: up to `limit` tasks that ended before `ended_before` are deleted with all
        their rows, dedupe keys included; so are up to `limit` deliveries naming no task received
        before then. Their kept files must have been expired first (expiring_files)."""

    async def expiring_files(
        self, kept_before: float | None, ended_before: float | None, limit: int
    ) -> list[CaptureRow]:
        """Kept files kept before `kept_before`, or of tasks that ended before `ended_before`."""

    async def expire_files(self, pks: list[int]) -> int:
        """Their files are gone from the media store: the rows say "expired"."""

    async def prune_preview(
        self, bodies_before: float, tasks_before: float | None, files_before: float | None
    ) -> dict[str, int]:
        """What a pass would delete now, by table (rows counted, nothing written)."""

    async def reclaim(self, table: str) -> None:
        """Make the space of the rows a pass deleted from `table` (a table a pass deletes from or
        rewrites, or count_changes) reusable by the next writes, without blocking them: PostgreSQL
        VACUUMs it; SQLite takes freed pages from its freelist by itself, so nothing is done."""
