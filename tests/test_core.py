"""The rules, one table each: every public function of receiver.rules.decide (and the schedule's pure
helpers) with its cases side by side, so a rule and its exceptions can be read together."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from receiver.errors import StoreError, UnknownToken, WrongVideo
from receiver.rules import decide
from receiver.rules.records import DeliveryResult, DeliveryRow, NewDelivery, NewEvent, TaskChange, TaskRow
from receiver.rules.tasks import is_terminal
from receiver.workers.schedule import MIN_SAMPLES, History, eager_first

NOW = 1_000_000.0
CREATED = NOW - 100.0  # every task here was submitted 100 s before NOW


def task(status: str = "queued", **fields: Any) -> TaskRow:
    """A task as a store reads it: video `vid1`, polled next a minute from now unless it ended."""
    values: dict[str, Any] = {
        "pk": 1,
        "video_id": "vid1",
        "status": status,
        "video": {"id": "vid1", "status": status, "prompt": "a fox"},
        "created_at": CREATED,
        "next_poll_at": None if is_terminal(status) else NOW + 60,
        "last_open_poll_at": None,
    }
    values.update(fields)
    return TaskRow(**values)


def update(status: str | None, **fields: Any) -> NewDelivery:
    """A verified delivery for `vid1` on its task's own URL, received at NOW."""
    values: dict[str, Any] = {
        "dedupe_key": "msg:1",
        "route": "task",
        "token_hash": "tok1",
        "video_id": "vid1",
        "verified_by": "standard-v1",
        "headers": {},
        "body": b"{}",
        "event_type": None,
        "status": status,
        "video": None if status is None else {"id": "vid1", "status": status},
        "actionable": True,
        "needs_confirm": False,
        "received_at": NOW,
        "next_poll_at": NOW + 120 if status in ("queued", "in_progress") else None,
    }
    values.update(fields)
    return NewDelivery(**values)


def stored(outcome: str, task_pk: int | None = 1, video_id: str | None = "vid1") -> DeliveryRow:
    return DeliveryRow(
        pk=7,
        id="dlv_7",
        dedupe_key="msg:1",
        task_pk=task_pk,
        video_id=video_id,
        route="task",
        verified_by="standard-v1",
        headers={},
        body=b"{}",
        event_type=None,
        status="completed",
        outcome=outcome,
        repeats=0,
        received_at=NOW - 10,
        last_seen_at=NOW - 10,
    )


def terminal_sets(status: str, resolved_by: str, completion: float | None, **more: Any) -> dict[str, Any]:
    """The columns a terminal result sets, the video left out (checked on its own)."""
    return {
        "status": status,
        "updated_at": NOW,
        "terminal_at": NOW,
        "resolved_by": resolved_by,
        "next_poll_at": None,
        "confirm_pending": False,
        "completion": completion,
        **more,
    }


def without_video(change: TaskChange) -> dict[str, Any]:
    return {k: v for k, v in change.sets.items() if k != "video"}


# -- submits -----------------------------------------------------------------------------------

RETRY = {"orphan_after": 45.0, "confirm_window": 3600.0}


@pytest.mark.parametrize(
    ("stored_hash", "status", "age", "request_hash", "verdict"),
    [
        ("h1", "queued", 5.0, "h2", "mismatch"),  # another body under the same key
        ("h1", "submitting", 5.0, "h2", "mismatch"),  # mismatch is checked first
        (None, "queued", 5.0, "h1", "mismatch"),
        ("h1", "submitting", 5.0, "h1", "in_flight"),  # the first is still being submitted
        ("h1", "submitting", 45.0, "h1", "unconfirmed"),  # its process died: outcome unknown
        ("h1", "unconfirmed", 5.0, "h1", "unconfirmed"),  # the provider may have it
        ("h1", "unconfirmed", 3599.0, "h1", "unconfirmed"),
        ("h1", "unconfirmed", 3600.0, "h1", "release"),  # the window ended with no word
        ("h1", "submitting", 3600.0, "h1", "release"),
        ("h1", "queued", 5.0, "h1", "exists"),
        ("h1", "completed", 99_999.0, "h1", "exists"),  # a finished task is answered, never released
        (None, "in_progress", 5.0, None, "exists"),
    ],
)
def test_on_submit_retry(
    stored_hash: str | None, status: str, age: float, request_hash: str | None, verdict: str
) -> None:
    assert decide.on_submit_retry(stored_hash, status, NOW - age, request_hash, NOW, **RETRY) == verdict


@pytest.mark.parametrize(
    ("status", "sets"),
    [
        ("submitting", {"status": "unconfirmed", "updated_at": NOW}),
        ("unconfirmed", {}),  # already so
        ("queued", {}),  # a delivery adopted it meanwhile: an ordinary task now
        ("completed", {}),
    ],
)
def test_on_submit_unknown(status: str, sets: dict[str, Any]) -> None:
    change = decide.on_submit_unknown(task(status, video_id=None), NOW)
    assert (change.sets, change.adds, change.event) == (sets, {}, None)


@pytest.mark.parametrize(
    ("orphan_after", "confirm_window", "cutoffs"),
    [
        (45.0, 3600.0, (NOW - 45.0, NOW - 3600.0)),
        (15.0, 60.0, (NOW - 15.0, NOW - 60.0)),
        (0.0, 0.0, (NOW, NOW)),
    ],
)
def test_submit_sweep(orphan_after: float, confirm_window: float, cutoffs: tuple[float, float]) -> None:
    assert decide.submit_sweep(NOW, orphan_after, confirm_window) == cutoffs


@pytest.mark.parametrize(
    ("known", "named", "claims"),
    [
        (None, "vid9", True),  # a delivery overtook our submit: it brings the id
        ("vid1", "vid1", False),  # already known
        ("vid1", "vid9", False),  # never replaced
        (None, None, False),  # nothing to claim
    ],
)
def test_claims_video(known: str | None, named: str | None, claims: bool) -> None:
    assert decide.claims_video(task(video_id=known), named) is claims


ANSWER = {"id": "vid1", "status": "queued", "prompt": "a fox", "parameters": {"seed": 1}}


@pytest.mark.parametrize(
    ("before", "answer_status", "sets", "event"),
    [
        # The usual: the answer gives the id and the first state; the first poll is planned.
        (
            task("submitting", video_id=None, next_poll_at=None),
            "queued",
            {"updated_at": NOW, "video_id": "vid1", "status": "queued", "next_poll_at": NOW + 60},
            None,
        ),
        # Done before it was even answered: recorded at once, by poll, finished (as well as we
        # know) halfway between the submit and now.
        (
            task("submitting", video_id=None, next_poll_at=None),
            "completed",
            {"video_id": "vid1", **terminal_sets("completed", "poll", 50.0)},
            "video.completed",
        ),
        # A delivery overtook the answer and finished the task: its state stays; the answer
        # only fills in what it alone carries.
        (
            task("completed", video={"id": "vid1", "status": "completed"}),
            "queued",
            {"updated_at": NOW},
            None,
        ),
        # The delivery brought no id (the video id is filled in from the answer).
        (
            task("in_progress", video_id=None, video={"status": "in_progress"}),
            "queued",
            {"updated_at": NOW, "video_id": "vid1"},
            None,
        ),
    ],
)
def test_on_submit_answer(
    before: TaskRow, answer_status: str, sets: dict[str, Any], event: str | None
) -> None:
    change = decide.on_submit_answer(
        before, "vid1", answer_status, {**ANSWER, "status": answer_status}, NOW, NOW + 60
    )
    assert without_video(change) == sets
    assert (change.event.type if change.event else None) == event
    # The answer's fields are kept; the state is the task's as it now reads.
    assert change.sets["video"]["parameters"] == {"seed": 1}
    assert change.sets["video"]["status"] == change.sets.get("status", before.status)
    assert change.adds == {}


def test_on_submit_answer_naming_another_video_is_refused() -> None:
    with pytest.raises(WrongVideo):
        decide.on_submit_answer(task("completed", video_id="vid2"), "vid1", "queued", ANSWER, NOW, NOW + 60)


# -- deliveries ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "delivery", "video_free", "outcome", "sets", "adds", "event"),
    [
        # A terminal result: applied once, by webhook, with its one event.
        (
            task("queued"),
            update("completed"),
            True,
            "applied",
            terminal_sets("completed", "webhook", 100.0),
            {},
            "video.completed",
        ),
        (
            task("in_progress"),
            update("failed"),
            True,
            "applied",
            terminal_sets("failed", "webhook", 100.0),
            {},
            "video.failed",
        ),
        # Again, the same status: a duplicate in effect; another status: an anomaly, kept apart.
        (task("completed"), update("completed"), True, "duplicate", {}, {}, None),
        (task("completed"), update("failed"), True, "anomaly", {}, {"anomalies": 1}, None),
        # Older than what we know: nothing changes.
        (task("completed"), update("in_progress"), True, "stale", {}, {}, None),
        # Forward but not done: the state moves, and the next poll moves back (never forward).
        (
            task("queued"),
            update("in_progress"),
            True,
            "applied",
            {"status": "in_progress", "updated_at": NOW, "next_poll_at": NOW + 120},
            {},
            None,
        ),
        (
            task("queued", next_poll_at=NOW + 500),
            update("in_progress"),
            True,
            "applied",
            {"status": "in_progress", "updated_at": NOW},
            {},
            None,
        ),
        # Still running, as we knew: the poll is pushed back only when it was due soon.
        (
            task("in_progress", next_poll_at=NOW + 10),
            update("in_progress"),
            True,
            "unchanged",
            {"next_poll_at": NOW + 120},
            {},
            None,
        ),
        (task("in_progress", next_poll_at=NOW + 90), update("in_progress"), True, "unchanged", {}, {}, None),
        # Thin or unsigned: only our own GET may settle it, at once.
        (
            task("queued"),
            update(None, needs_confirm=True),
            True,
            "pending_confirm",
            {"confirm_pending": True, "next_poll_at": NOW},
            {},
            None,
        ),
        (
            task("queued"),
            update("completed", needs_confirm=True),
            True,
            "pending_confirm",
            {"confirm_pending": True, "next_poll_at": NOW},
            {},
            None,
        ),
        # ...unless the task already ended: then it repeats or contradicts the result.
        (task("completed"), update(None, needs_confirm=True), True, "duplicate", {}, {}, None),
        (
            task("completed"),
            update("failed", needs_confirm=True),
            True,
            "anomaly",
            {},
            {"anomalies": 1},
            None,
        ),
        # A type we do not act on: kept, changes nothing.
        (task("queued"), update("completed", actionable=False), True, "ignored", {}, {}, None),
        # A delivery that overtook our submit adopts the task and gives it its video id...
        (
            task("unconfirmed", video_id=None, next_poll_at=None),
            update("in_progress"),
            True,
            "applied",
            {"video_id": "vid1", "status": "in_progress", "updated_at": NOW, "next_poll_at": NOW + 120},
            {},
            None,
        ),
        (
            task("submitting", video_id=None, next_poll_at=None),
            update("completed"),
            True,
            "applied",
            {"video_id": "vid1", **terminal_sets("completed", "webhook", 100.0)},
            {},
            "video.completed",
        ),
        # ...adopted even when it says nothing new (queued): then polled like any other task.
        (
            task("unconfirmed", video_id=None, next_poll_at=None, video={}),
            update("queued"),
            True,
            "applied",
            {"video_id": "vid1", "status": "queued", "updated_at": NOW, "next_poll_at": NOW + 120},
            {},
            None,
        ),
        # ...and so does one that cannot move its state itself (thin; a type we do not act on).
        (
            task("unconfirmed", video_id=None, next_poll_at=None),
            update(None, needs_confirm=True),
            True,
            "pending_confirm",
            {
                "video_id": "vid1",
                "confirm_pending": True,
                "next_poll_at": NOW,
                "status": "queued",
                "updated_at": NOW,
            },
            {},
            None,
        ),
        (
            task("unconfirmed", video_id=None, next_poll_at=None),
            update("in_progress", actionable=False),
            True,
            "ignored",
            {"video_id": "vid1", "status": "queued", "updated_at": NOW, "next_poll_at": NOW + 120},
            {},
            None,
        ),
        # ...but never takes an id another task holds.
        (
            task("unconfirmed", video_id=None, next_poll_at=None),
            update("in_progress"),
            False,
            "applied",
            {"status": "in_progress", "updated_at": NOW, "next_poll_at": NOW + 120},
            {},
            None,
        ),
    ],
)
def test_on_delivery(
    before: TaskRow,
    delivery: NewDelivery,
    video_free: bool,
    outcome: str,
    sets: dict[str, Any],
    adds: dict[str, int],
    event: str | None,
) -> None:
    got, change = decide.on_delivery(before, delivery, video_free=video_free)
    assert got == outcome
    assert without_video(change) == sets
    assert change.adds == adds
    assert (change.event.type if change.event else None) == event
    if "video" in change.sets:
        assert change.sets["video"]["status"] == sets["status"]
        assert change.sets["video"].get("prompt") == before.video.get("prompt")  # merged, not replaced
    if change.event is not None:
        assert change.event.video_id == "vid1" and change.event.data["status"] == sets["status"]
        assert change.event.created_at == NOW and change.event.id.startswith("evt_")


@pytest.mark.parametrize(
    ("before", "row", "status", "needs_confirm", "video_free", "outcome", "sets", "stored_outcome"),
    [
        # A delivery kept before its task was known: applied now, and its record says so.
        (
            task("queued"),
            stored("unmatched", task_pk=None),
            "completed",
            False,
            True,
            "applied",
            terminal_sets("completed", "webhook", 100.0),
            "applied",
        ),
        # First match for a task whose submit it overtook: it brings the id.
        (
            task("unconfirmed", video_id=None, next_poll_at=None),
            stored("unmatched", task_pk=None),
            "completed",
            False,
            True,
            "applied",
            {"video_id": "vid1", **terminal_sets("completed", "webhook", 100.0)},
            "applied",
        ),
        # A settled delivery replayed: reports what it would do now, keeps its record.
        (task("completed"), stored("applied"), "completed", False, True, "duplicate", {}, None),
        (task("failed"), stored("applied"), "completed", False, True, "anomaly", {}, None),
        # Already matched once: it never claims an id again.
        (
            task("queued", video_id=None),
            stored("applied", task_pk=1),
            "in_progress",
            False,
            True,
            "applied",
            {"status": "in_progress", "updated_at": NOW},
            None,
        ),
        # Thin: only our GET settles it.
        (
            task("queued"),
            stored("unmatched", task_pk=None),
            None,
            True,
            True,
            "pending_confirm",
            {"confirm_pending": True, "next_poll_at": NOW},
            "pending_confirm",
        ),
    ],
)
def test_on_replay(
    before: TaskRow,
    row: DeliveryRow,
    status: str | None,
    needs_confirm: bool,
    video_free: bool,
    outcome: str,
    sets: dict[str, Any],
    stored_outcome: str | None,
) -> None:
    video = None if status is None else {"id": "vid1", "status": status}
    got, change, keep = decide.on_replay(
        before, row, status, video, needs_confirm, NOW, video_free=video_free
    )
    assert (got, without_video(change), keep) == (outcome, sets, stored_outcome)


# -- polls ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "status", "options", "sets", "adds"),
    [
        # The GET failed: counted; the next poll as the poller planned it.
        (
            task("queued"),
            None,
            {"failed": True},
            {"next_poll_at": NOW + 30},
            {"polls": 1, "poll_failures": 1},
        ),
        (task("queued", next_poll_at=NOW + 30), None, {"failed": True}, {}, {"polls": 1, "poll_failures": 1}),
        (task("completed"), None, {"failed": True}, {}, {"polls": 1, "poll_failures": 1}),
        # Still open: the next poll, the failure count reset, and when it was last seen open.
        (
            task("queued", poll_failures=2),
            "queued",
            {},
            {"next_poll_at": NOW + 30, "poll_failures": 0, "last_open_poll_at": NOW},
            {"polls": 1},
        ),
        (
            task("queued"),
            "in_progress",
            {},
            {"status": "in_progress", "updated_at": NOW, "next_poll_at": NOW + 30, "last_open_poll_at": NOW},
            {"polls": 1},
        ),
        # Found done: recorded by poll, completed halfway between the last time it was seen
        # open (or its submit) and now.
        (task("in_progress"), "completed", {}, terminal_sets("completed", "poll", 50.0), {"polls": 1}),
        (
            task("in_progress", last_open_poll_at=NOW - 20),
            "completed",
            {},
            terminal_sets("completed", "poll", 90.0),
            {"polls": 1},
        ),
        # A thin or unsigned delivery asked for this GET: the result came by webhook.
        (
            task("in_progress", confirm_pending=True),
            "failed",
            {},
            terminal_sets("failed", "webhook", 100.0),
            {"polls": 1},
        ),
        # A deadline, not a GET: no poll counted, and no completion time to learn from.
        (
            task("in_progress"),
            "failed",
            {"resolved_by": "deadline"},
            terminal_sets("failed", "deadline", None),
            {},
        ),
        # After the result: a contradiction is an anomaly, a repeat changes nothing.
        (task("completed"), "failed", {}, {}, {"polls": 1, "anomalies": 1}),
        (task("completed"), "completed", {}, {}, {"polls": 1}),
    ],
)
def test_on_poll(
    before: TaskRow, status: str | None, options: dict[str, Any], sets: dict[str, Any], adds: dict[str, int]
) -> None:
    video = None if status is None else {"id": "vid1", "status": status}
    change = decide.on_poll(before, status, video, NOW, NOW + 30, **options)
    assert without_video(change) == sets
    assert change.adds == adds
    terminal = "terminal_at" in sets
    assert (change.event is not None) is terminal


# -- folding changes -----------------------------------------------------------------------------

EVENT_A = NewEvent("evt_a", "video.completed", "vid1", NOW, {})
EVENT_B = NewEvent("evt_b", "video.failed", "vid1", NOW, {})


@pytest.mark.parametrize(
    ("first", "second", "folded"),
    [
        (TaskChange(), TaskChange(), TaskChange()),
        # A later set wins; counters add up.
        (
            TaskChange({"status": "in_progress", "next_poll_at": 1.0}, {"polls": 1}),
            TaskChange({"status": "completed"}, {"polls": 1, "anomalies": 1}),
            TaskChange({"status": "completed", "next_poll_at": 1.0}, {"polls": 2, "anomalies": 1}),
        ),
        # The event is kept whichever change made it.
        (TaskChange(event=EVENT_A), TaskChange({"polls": 1}), TaskChange({"polls": 1}, event=EVENT_A)),
        (TaskChange(), TaskChange(event=EVENT_B), TaskChange(event=EVENT_B)),
    ],
)
def test_merge(first: TaskChange, second: TaskChange, folded: TaskChange) -> None:
    decide.merge(first, second)
    assert first == folded


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (TaskChange(), {}),
        (
            TaskChange({"status": "completed", "next_poll_at": None}),
            {"status": "completed", "next_poll_at": None},
        ),
        (TaskChange(adds={"polls": 2, "anomalies": 1}), {"polls": 2, "anomalies": 1}),
        # Columns the row does not carry (the store's own) leave it as it was.
        (TaskChange({"completion": 12.0, "terminal_at": NOW}, {"no_such": 1}), {"terminal_at": NOW}),
    ],
)
def test_apply_change(change: TaskChange, expected: dict[str, Any]) -> None:
    before = task("queued")
    after = decide.apply_change(before, change)
    assert {
        k: v for k, v in dataclasses.asdict(after).items() if dataclasses.asdict(before)[k] != v
    } == expected
    if not expected:
        assert after is before


# -- fan-out -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("due", "in_flight", "caps", "default_cap", "limit", "taken"),
    [
        ([], {}, {}, 4, 10, []),
        ([(1, 10), (2, 10), (3, 10)], {}, {}, 4, 10, [1, 2, 3]),
        ([(1, 10), (2, 10), (3, 10)], {}, {}, 4, 2, [1, 2]),  # the batch's limit
        ([(1, 10), (2, 10), (3, 10)], {}, {}, 2, 10, [1, 2]),  # the default cap
        ([(1, 10), (2, 10), (3, 10)], {10: 1}, {}, 2, 10, [1]),  # sends already in flight count
        # A dead subscriber at its cap holds no one else's place, earliest first among the rest.
        ([(1, 10), (2, 20), (3, 10), (4, 20), (5, 30)], {10: 1}, {10: 1}, 4, 10, [2, 4, 5]),
        ([(1, 10), (2, 20), (3, 20), (4, 20)], {}, {20: 2, 10: 8}, 1, 10, [1, 2, 3]),
        ([(1, 10), (2, 20)], {10: 5, 20: 0}, {10: 5}, 1, 10, [2]),
    ],
)
def test_pick_sends(
    due: list[tuple[int, int]],
    in_flight: dict[int, int],
    caps: dict[int, int],
    default_cap: int,
    limit: int,
    taken: list[int],
) -> None:
    assert decide.pick_sends(due, in_flight, caps, default_cap, limit) == taken


# -- a batch of deliveries -----------------------------------------------------------------------


def by_token(status: str = "queued", **fields: Any) -> tuple[str, TaskRow]:
    return ("tok1", task(status, **fields))


@pytest.mark.parametrize(
    ("batch", "tasks", "already", "steps", "outcomes", "recorded"),
    [
        # Refused before anything: a token we never minted, a payload naming another video.
        ([update("completed", token_hash="tok9")], [by_token()], set(), ["error:UnknownToken"], [], {}),
        ([update("completed", video_id="vid2")], [by_token()], set(), ["error:WrongVideo"], [], {}),
        # A copy of a delivery kept earlier, and two copies in one batch: applied once.
        ([update("completed")], [by_token()], {update("completed").key}, ["repeat"], [], {}),
        (
            [update("completed"), update("completed")],
            [by_token()],
            set(),
            ["new", "repeat"],
            ["applied"],
            {0: 1},
        ),
        # Later deliveries see what earlier ones did: progress, then the result, then a contradiction.
        (
            [
                update("in_progress", dedupe_key="a"),
                update("completed", dedupe_key="b"),
                update("failed", dedupe_key="c"),
            ],
            [by_token()],
            set(),
            ["new", "new", "new"],
            ["applied", "applied", "anomaly"],
            {1: 1},
        ),
        # On the shared URL: a video we do not know yet is kept (unmatched) or, if we would not
        # act on it anyway, ignored.
        ([update("completed", token_hash=None, video_id="vid7")], [], set(), ["new"], ["unmatched"], {}),
        (
            [update("completed", token_hash=None, video_id="vid7", actionable=False)],
            [],
            set(),
            ["new"],
            ["ignored"],
            {},
        ),
        ([update("completed", token_hash=None)], [by_token()], set(), ["new"], ["applied"], {0: 1}),
    ],
)
def test_plan_deliveries(
    batch: list[NewDelivery],
    tasks: list[tuple[str, TaskRow]],
    already: set[str],
    steps: list[str],
    outcomes: list[str],
    recorded: dict[int, int],
) -> None:
    plan = decide.plan_deliveries(batch, tasks, already)
    kinds = [f"error:{type(v).__name__}" if kind == "error" else kind for kind, v in plan.steps]
    assert kinds == steps
    assert [outcome for _, _, _, outcome in plan.new] == outcomes
    assert plan.recorded == recorded
    assert sum(1 for change in plan.changes.values() if change.event is not None) == len(recorded)


def test_plan_deliveries_adopts_once_and_later_ones_find_the_task_by_its_new_id() -> None:
    adopted = task("unconfirmed", video_id=None, next_poll_at=None)
    batch = [
        update("in_progress", dedupe_key="a"),  # on the task's URL: brings the id
        update("completed", dedupe_key="b", token_hash=None),  # on the shared URL: found by that id
    ]
    plan = decide.plan_deliveries(batch, [("tok1", adopted)], set())
    assert [outcome for _, _, _, outcome in plan.new] == ["applied", "applied"]
    assert [task_pk for _, task_pk, _, _ in plan.new] == [1, 1]
    assert plan.changes[1].sets["video_id"] == "vid1" and plan.changes[1].sets["status"] == "completed"


REFUSED = UnknownToken()


@pytest.mark.parametrize(
    ("steps", "new", "recorded", "sends", "answers"),
    [
        ([("error", REFUSED)], [], {}, {}, [REFUSED]),
        ([("repeat", "msg:1")], [], {}, {}, [DeliveryResult("dlv_3", True, "applied", None)]),
        (
            [("new", 0)],
            [(update("in_progress"), 1, "vid1", "applied")],
            {},
            {},
            [DeliveryResult("dlv_5", False, "applied", None, False, 0)],
        ),
        # The delivery that recorded its task's result says so, with the sends it queued.
        (
            [("new", 0), ("repeat", "msg:1")],
            [(update("completed"), 1, "vid1", "applied")],
            {0: 1},
            {1: 3},
            [
                DeliveryResult("dlv_5", False, "applied", None, True, 3),
                DeliveryResult("dlv_3", True, "applied", None),
            ],
        ),
    ],
)
def test_plan_results(
    steps: list[tuple[str, Any]],
    new: list[tuple[NewDelivery, int | None, str | None, str]],
    recorded: dict[int, int],
    sends: dict[int, int],
    answers: list[DeliveryResult | StoreError],
) -> None:
    plan = decide.DeliveryPlan(steps=steps, new=new, recorded=recorded)
    key = update(None).key  # msg:1 as the store keeps it: scoped to its task
    assert decide.plan_results(plan, {key: 5}, {"msg:1": (3, "applied")}, sends) == answers


# -- the poll schedule's pure helpers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("completions", "delivered", "settled", "learned", "reliability"),
    [
        ((), 0, 0, False, 1.0),  # nothing settled: no evidence of loss
        (tuple(range(1, MIN_SAMPLES)), 19, MIN_SAMPLES - 1, False, 1.0),
        (tuple(range(1, MIN_SAMPLES + 1)), 10, MIN_SAMPLES, True, 0.5),
        (tuple(range(1, MIN_SAMPLES + 1)), 0, 2 * MIN_SAMPLES, True, 0.0),
        (tuple(range(1, 2 * MIN_SAMPLES)), 30, MIN_SAMPLES - 1, False, 30 / (MIN_SAMPLES - 1)),
    ],
)
def test_history(
    completions: tuple[float, ...], delivered: int, settled: int, learned: bool, reliability: float
) -> None:
    h = History(completions, delivered, settled)
    assert (h.learned, h.reliability) == (learned, pytest.approx(reliability))


@pytest.mark.parametrize(
    ("completions", "first"),
    [
        ((10.0,) * 50, 8.0),  # 0.8 x the 2nd percentile
        (tuple(float(n) for n in range(1, 101)), 0.8 * (1 + 0.02 * 99)),
        ((1.0, 1000.0), 0.8 * (1 + 0.02 * 999)),
    ],
)
def test_eager_first(completions: tuple[float, ...], first: float) -> None:
    assert eager_first(History(completions, 0, len(completions))) == pytest.approx(first)
