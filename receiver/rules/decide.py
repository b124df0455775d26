"""What each write does to a task, decided from the rows read (pure): the change sets stores write.

Every backend reads the rows a write needs, asks a function here, and writes the TaskChange it
returns in the same transaction. The rules (duplicate versus anomaly for thin deliveries, the
merge of a submit answer, the completion estimate, how `resolved_by` is inferred, the throttle
on pushing a poll back, the event's shape, orphan submits) live here once, so a second backend
adds SQL, never rules.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from receiver.errors import StoreError, UnknownToken, WrongVideo
from receiver.rules.ids import new_id
from receiver.rules.records import DeliveryResult, DeliveryRow, NewDelivery, NewEvent, TaskChange, TaskRow
from receiver.rules.tasks import (
    ANOMALY,
    APPLIED,
    DUPLICATE,
    PRE_SUBMIT,
    TERMINAL,
    UNCHANGED,
    Transition,
    transition,
)

__all__ = [
    "ORPHAN_GRACE",
    "DeliveryPlan",
    "PruneCutoffs",
    "apply_change",
    "claims_video",
    "lookup_keys",
    "merge",
    "on_delivery",
    "on_poll",
    "on_replay",
    "on_submit_answer",
    "on_submit_retry",
    "on_submit_unknown",
    "pick_sends",
    "plan_deliveries",
    "plan_results",
    "prune_cutoffs",
    "submit_sweep",
]

# A submit still "submitting" this long after the provider's whole-call deadline lost its process.
ORPHAN_GRACE = 15.0

PENDING_CONFIRM = "pending_confirm"  # thin or unsigned: only our own GET may settle it
PUSH = "push"  # still running, as we knew: only the next poll moves back
IGNORED = "ignored"
UNMATCHED = "unmatched"


def on_submit_retry(
    stored_hash: str | None,
    stored_status: str,
    stored_created_at: float,
    request_hash: str | None,
    now: float,
    *,
    orphan_after: float,
    confirm_window: float,
) -> str:
    """A submit reuses an Idempotency-Key: "mismatch" (another body), "in_flight" (the first is
    still being submitted), "unconfirmed" (the first's outcome is unknown: the provider may have
    it, so no second call until a delivery settles it or its window ends), "release" (the window
    ended with no word from the provider: free the key so this retry can submit) or "exists"
    (answer the first task)."""
    if stored_hash != request_hash:
        return "mismatch"
    if stored_status in PRE_SUBMIT:
        age = now - stored_created_at
        if stored_status == "submitting" and age < orphan_after:
            return "in_flight"
        return "unconfirmed" if age < confirm_window else "release"
    return "exists"


def on_submit_unknown(task: TaskRow, now: float) -> TaskChange:
    """Our submit's outcome is unknown: keep the task, unconfirmed, unless a delivery has
    already adopted it (then it is an ordinary task and nothing changes)."""
    change = TaskChange()
    if task.status == "submitting":
        change.sets.update(status="unconfirmed", updated_at=now)
    return change


def submit_sweep(now: float, orphan_after: float, confirm_window: float) -> tuple[float, float]:
    """The sweep's two cut-offs: tasks still "submitting" created before the first lost their
    process and become "unconfirmed"; "unconfirmed" tasks created before the second, which no
    delivery has adopted, are deleted (their key and token are free again)."""
    return now - orphan_after, now - confirm_window


@dataclasses.dataclass(frozen=True)
class PruneCutoffs:
    """What a pruning pass deletes: bodies, events and sends of tasks that ended before
    `bodies_before`; task rows and dedupe keys of tasks that ended before `tasks_before`; kept
    files kept before `files_before`. None keeps that kind forever."""

    bodies_before: float
    tasks_before: float | None
    files_before: float | None


def prune_cutoffs(
    now: float, retention: float, task_retention: float, media_retention: float
) -> PruneCutoffs:
    """Retention settings (seconds; 0 keeps task rows, keys and files) as cut-off times. Keys
    never go before bodies: a copy of a pruned delivery must still be found a duplicate."""
    tasks_before = None if task_retention <= 0 else now - max(task_retention, retention)
    files_before = None if media_retention <= 0 else now - media_retention
    return PruneCutoffs(now - retention, tasks_before, files_before)


def claims_video(task: TaskRow, video_id: str | None) -> bool:
    """Whether an update naming `video_id` would give the task its video id (a delivery that
    overtook our submit). The store then checks no other task holds that id."""
    return task.video_id is None and video_id is not None


def on_delivery(task: TaskRow, d: NewDelivery, *, video_free: bool) -> tuple[str, TaskChange]:
    """A new delivery for `task` (read with the lean columns): its outcome and the change."""
    outcome, result = _plan(task, d.status, d.video, d.actionable, d.needs_confirm)
    claim = d.video_id if video_free and claims_video(task, d.video_id) else None
    push = d.next_poll_at
    write_as = outcome
    if outcome == UNCHANGED and push is not None and task.next_poll_at is not None:
        # Still running, as we knew: push the next poll back only when it was due soon, so a
        # stream of progress updates does not rewrite the task each time.
        if task.next_poll_at > d.received_at + 0.5 * (push - d.received_at):
            push = None
        write_as = PUSH if push is not None else UNCHANGED
    change = _write(
        task, write_as, result, d.received_at, resolved_by="webhook", next_poll_at=push, claim=claim
    )
    if claim is not None and task.status in PRE_SUBMIT:
        # The provider has the task (it calls back about it): adopt it as an ordinary one.
        change.sets.setdefault("status", "queued")
        change.sets.setdefault("updated_at", d.received_at)
        if change.sets["status"] not in TERMINAL and change.sets.get("next_poll_at") is None:
            change.sets["next_poll_at"] = d.next_poll_at
    return outcome, change


def on_replay(
    task: TaskRow,
    delivery: DeliveryRow,
    status: str | None,
    video: dict[str, Any] | None,
    needs_confirm: bool,
    now: float,
    *,
    video_free: bool,
) -> tuple[str, TaskChange, str | None]:
    """A stored delivery run again (replay, or a late match once its task is known): the
    outcome, the task's change, and the delivery's new stored outcome (None: keep it). A replay
    of a settled delivery only reports what it would do now, and keeps the record of what it did."""
    first_match = delivery.task_pk is None
    claim = (
        delivery.video_id if first_match and video_free and claims_video(task, delivery.video_id) else None
    )
    outcome, result = _plan(task, status, video, True, needs_confirm)
    change = _write(task, outcome, result, now, resolved_by="webhook", next_poll_at=None, claim=claim)
    return outcome, change, (outcome if delivery.outcome == UNMATCHED else None)


def on_poll(
    task: TaskRow,
    status: str | None,
    video: dict[str, Any] | None,
    now: float,
    next_poll_at: float | None,
    *,
    resolved_by: str | None = None,
    failed: bool = False,
) -> TaskChange:
    """What our own GET (or a deadline) does to `task` (read whole)."""
    change = TaskChange()
    terminal = task.status in TERMINAL
    if resolved_by != "deadline":
        change.adds["polls"] = 1
    if failed or status is None or video is None:
        change.adds["poll_failures"] = 1
        _set(change, task, "next_poll_at", None if terminal else next_poll_at)
        return change
    result = transition(task.status, task.video, status, video)
    # A thin or unsigned delivery asked for this GET: the result came by webhook.
    source = resolved_by or ("webhook" if task.confirm_pending else "poll")
    merge(change, _write(task, result.outcome, result, now, resolved_by=source, next_poll_at=next_poll_at))
    if not result.became_terminal and not terminal:
        change.sets.pop("next_poll_at", None)
        _set(change, task, "next_poll_at", next_poll_at)
        _set(change, task, "poll_failures", 0)
        change.sets["last_open_poll_at"] = now
    return change


def on_submit_answer(
    task: TaskRow,
    video_id: str,
    status: str,
    video: dict[str, Any],
    now: float,
    next_poll_at: float,
) -> TaskChange:
    """The provider answered our submit. A delivery may have overtaken it: then its state stays
    and the answer only fills in what only it carries (prompt, parameters...)."""
    if task.video_id is not None and task.video_id != video_id:
        raise WrongVideo(video_id)
    change = TaskChange()
    change.sets["updated_at"] = now
    _set(change, task, "video_id", video_id)
    result = transition(task.status, task.video, status, video)
    if result.outcome != APPLIED:
        merged = {**video, **task.video}
        if merged != task.video:
            change.sets["video"] = merged
    else:
        claim = video_id if task.video_id is None else None
        merge(
            change,
            _write(task, APPLIED, result, now, resolved_by="poll", next_poll_at=next_poll_at, claim=claim),
        )
    if task.status in PRE_SUBMIT and not result.became_terminal:
        after = apply_change(task, change)
        if after.status not in TERMINAL and after.next_poll_at is None:
            change.sets["next_poll_at"] = next_poll_at
    return change


def apply_change(task: TaskRow, change: TaskChange) -> TaskRow:
    """The task as it reads after `change` (a batch deciding several updates of one task)."""
    fields = {f.name for f in dataclasses.fields(TaskRow)}
    values: dict[str, Any] = {k: v for k, v in change.sets.items() if k in fields}
    for name, delta in change.adds.items():
        if name in fields:
            values[name] = getattr(task, name) + delta
    return dataclasses.replace(task, **values) if values else task


# -- the pieces ------------------------------------------------------------------------------


def _plan(
    task: TaskRow,
    status: str | None,
    video: dict[str, Any] | None,
    actionable: bool,
    needs_confirm: bool,
) -> tuple[str, Transition | None]:
    """What an update does to its task: its outcome and the transition, if any."""
    if not actionable:
        return IGNORED, None
    if needs_confirm or status is None or video is None:
        if task.status in TERMINAL:
            return (DUPLICATE if status in (None, task.status) else ANOMALY), None
        return PENDING_CONFIRM, None
    result = transition(task.status, task.video, status, video)
    return result.outcome, result


def _write(
    task: TaskRow,
    outcome: str,
    result: Transition | None,
    now: float,
    *,
    resolved_by: str,
    next_poll_at: float | None,
    claim: str | None = None,
) -> TaskChange:
    """The change an outcome makes: only the columns whose values change."""
    change = TaskChange()
    if claim is not None:
        change.sets["video_id"] = claim
    if outcome == PENDING_CONFIRM:
        _set(change, task, "confirm_pending", True)
        change.sets["next_poll_at"] = now
    elif outcome == ANOMALY:
        change.adds["anomalies"] = 1
    elif outcome == PUSH and next_poll_at is not None:
        _push(change, task, next_poll_at)
    elif outcome == APPLIED and result is not None:
        change.sets.update(status=result.status, video=result.video, updated_at=now)
        if result.became_terminal:
            change.sets.update(
                terminal_at=now,
                resolved_by=resolved_by,
                next_poll_at=None,
                confirm_pending=False,
                completion=_completion(task, now, resolved_by),
            )
            change.event = _event(task, result, now, claim)
        elif next_poll_at is not None:
            _push(change, task, next_poll_at)
    return change


def _push(change: TaskChange, task: TaskRow, next_poll_at: float) -> None:
    """A newer non-terminal state pushes the next poll back, never forward."""
    _set(change, task, "next_poll_at", max(task.next_poll_at or 0.0, next_poll_at))


def _set(change: TaskChange, task: TaskRow, column: str, value: Any) -> None:
    """Set a column only when its value changes: an update that rewrites an indexed column with
    its own value still costs a dead index entry on PostgreSQL."""
    if getattr(task, column, object()) != value:
        change.sets[column] = value


def merge(into: TaskChange, other: TaskChange) -> None:
    """Fold `other` (a later change of the same task) into `into`."""
    into.sets.update(other.sets)
    for name, delta in other.adds.items():
        into.adds[name] = into.adds.get(name, 0) + delta
    into.event = other.event or into.event


def _completion(task: TaskRow, now: float, resolved_by: str) -> float | None:
    """Seconds from submit to result, as well as we know them (what the poll schedule learns)."""
    if resolved_by == "webhook":
        return now - task.created_at
    if resolved_by == "poll":
        # The result appeared between the last poll that saw it open and this one.
        since = task.last_open_poll_at or task.created_at
        return (since + now) / 2 - task.created_at
    return None


def _event(task: TaskRow, result: Transition, now: float, claim: str | None) -> NewEvent:
    """The terminal result's one event: the video object as recorded, under a fresh id."""
    video_id = task.video_id or claim or str(result.video.get("id"))
    data = {**result.video, "id": video_id, "object": "video", "status": result.status}
    data.pop("provider_status", None)
    kind = "video.completed" if result.status == "completed" else "video.failed"
    files = result_files(data) if result.status == "completed" else ()
    return NewEvent(new_id("event"), kind, video_id, now, data, files)


_VARIANT = re.compile(r"[a-z0-9_]{1,64}")
MAX_FILES = 16  # result files kept per task at most


def result_files(video: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The files a completed video's result names: every http(s) `*_url` in its content
    (video_url -> variant "video", last_frame_url -> "last_frame")."""
    content = video.get("content")
    if not isinstance(content, dict):
        return ()
    found: list[tuple[str, str]] = []
    for name, url in sorted(content.items()):
        if not (isinstance(name, str) and name.endswith("_url") and isinstance(url, str)):
            continue
        variant = name[: -len("_url")]
        if _VARIANT.fullmatch(variant) and url.startswith(("https://", "http://")) and len(url) <= 4096:
            found.append((variant, url))
    return tuple(found[:MAX_FILES])


def pick_sends(
    due: list[tuple[int, int]],
    in_flight: dict[int, int],
    caps: Mapping[int, int],
    default_cap: int,
    limit: int,
) -> list[int]:
    """From due sends (outbox pk, subscription pk), earliest first, take up to `limit` while no
    subscriber goes past its cap in flight (`caps`, else `default_cap`), so one slow or dead
    subscriber never holds the others' places."""
    counts = dict(in_flight)
    taken: list[int] = []
    for outbox_pk, subscription_pk in due:
        if counts.get(subscription_pk, 0) >= caps.get(subscription_pk, default_cap):
            continue
        counts[subscription_pk] = counts.get(subscription_pk, 0) + 1
        taken.append(outbox_pk)
        if len(taken) == limit:
            break
    return taken


@dataclasses.dataclass(slots=True)
class DeliveryPlan:
    """What a batch of deliveries does, decided in arrival order (see plan_deliveries)."""

    # Per delivery: ("error", StoreError) | ("repeat", dedupe key) | ("new", index into `new`).
    steps: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    # New rows: (delivery, task pk or None, video id, outcome).
    new: list[tuple[NewDelivery, int | None, str | None, str]] = dataclasses.field(default_factory=list)
    repeats: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # key -> times seen
    changes: dict[int, TaskChange] = dataclasses.field(default_factory=dict)  # task pk -> change
    recorded: dict[int, int] = dataclasses.field(default_factory=dict)  # new index -> task it ended


def plan_deliveries(
    batch: list[NewDelivery], tasks: list[tuple[str, TaskRow]], stored: set[str]
) -> DeliveryPlan:
    """Decide a batch of deliveries in arrival order: `tasks` are (token hash, lean row) of every
    task a delivery names by token or by video id, `stored` those of the batch's `lookup_keys`
    already kept. Later deliveries see what earlier ones did; copies of one delivery are
    repeats, applied once."""
    plan = DeliveryPlan()
    rows: dict[int, TaskRow] = {}
    by_token: dict[str, int] = {}
    by_video: dict[str, int] = {}
    for token_hash, task in tasks:
        rows[task.pk] = task
        by_token[token_hash] = task.pk
        if task.video_id is not None:
            by_video[task.video_id] = task.pk
    fresh: set[str] = set()
    for d in batch:
        task_pk: int | None = None
        if d.token_hash is not None:
            task_pk = by_token.get(d.token_hash)
            if task_pk is None:
                plan.steps.append(("error", UnknownToken()))
                continue
            known = rows[task_pk].video_id
            if d.video_id is not None and known not in (None, d.video_id):
                plan.steps.append(("error", WrongVideo(d.video_id)))
                continue
        elif d.video_id is not None:
            task_pk = by_video.get(d.video_id)
        first = d.key if d.key in stored or d.key in fresh else None
        if first is None and d.legacy_key is not None and d.legacy_key in stored:
            first = d.legacy_key  # kept before keys were scoped: a copy is still a duplicate
        if first is not None:
            plan.repeats.setdefault(first, []).append(d.received_at)
            plan.steps.append(("repeat", first))
            continue
        if task_pk is None:
            outcome = UNMATCHED if d.actionable else IGNORED
        else:
            task = rows[task_pk]
            free = claims_video(task, d.video_id) and d.video_id not in by_video
            outcome, change = on_delivery(task, d, video_free=free)
            if change.event is not None:
                plan.recorded[len(plan.new)] = task_pk
            if change:
                rows[task_pk] = apply_change(task, change)
                if "video_id" in change.sets:
                    by_video[change.sets["video_id"]] = task_pk
                merge(plan.changes.setdefault(task_pk, TaskChange()), change)
        fresh.add(d.key)
        video_id = d.video_id or (rows[task_pk].video_id if task_pk is not None else None)
        plan.steps.append(("new", len(plan.new)))
        plan.new.append((d, task_pk, video_id, outcome))
    return plan


def lookup_keys(batch: list[NewDelivery]) -> list[str]:
    """The kept keys a batch is a repeat of when present: each delivery's scoped key, and the
    key its copy was kept under before keys were scoped."""
    keys = {d.key for d in batch}
    keys.update(d.legacy_key for d in batch if d.legacy_key is not None)
    return list(keys)


def plan_results(
    plan: DeliveryPlan,
    inserted: dict[str, int],
    firsts: dict[str, tuple[int, str]],
    sends: dict[int, int],
) -> list[DeliveryResult | StoreError]:
    """Each delivery's answer, once its batch is written: its row's id (the first copy's for a
    repeat), its outcome, and whether it recorded its task's result (and how many sends)."""
    out: list[DeliveryResult | StoreError] = []
    for kind, value in plan.steps:
        if kind == "error":
            out.append(value)
        elif kind == "repeat":
            pk, outcome = firsts[value]
            out.append(DeliveryResult(f"dlv_{pk}", True, outcome, None))
        else:
            d, _, _, outcome = plan.new[value]
            recorded = plan.recorded.get(value)
            count = sends.get(recorded, 0) if recorded is not None else 0
            out.append(
                DeliveryResult(f"dlv_{inserted[d.key]}", False, outcome, None, recorded is not None, count)
            )
    return out
