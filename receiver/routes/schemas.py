"""The API's shapes: requests, answers, errors and list pages, as msgspec Structs.

Requests are validated by converting the parsed body (or query, or form) into these types, and
GET /openapi.json is generated from the same types, so the rules live in one place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from receiver.errors import InvalidRequest
from receiver.rules.ids import DEFAULT_LIMIT, KINDS, MAX_LIMIT

__all__ = [
    "ASPECT_RATIOS",
    "EVENT_TYPES",
    "RESOLUTIONS",
    "UNSET",
    "DeadLetterQuery",
    "Delivery",
    "DeliveryAck",
    "DeliveryHealthList",
    "DeliveryList",
    "DeliveryListQuery",
    "DeliveryReplay",
    "ErrorBody",
    "Event",
    "EventDetail",
    "EventList",
    "EventListQuery",
    "EventReplayRequest",
    "KeptFile",
    "Replay",
    "ReplayStatus",
    "Send",
    "SendList",
    "Stats",
    "StreamQuery",
    "SubscriberHealth",
    "SubscriberHealthList",
    "Subscription",
    "SubscriptionCreate",
    "SubscriptionList",
    "SubscriptionListQuery",
    "Video",
    "VideoContentQuery",
    "VideoCreate",
    "VideoList",
    "VideoListQuery",
    "convert",
    "convert_form",
    "convert_query",
    "given",
    "to_dict",
]

T = TypeVar("T")

RESOLUTIONS = ("360p", "480p", "540p", "720p", "1080p", "1K", "2K", "4K")
ASPECT_RATIOS = ("adaptive", "16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "9:21")
EVENT_TYPES = ("video.completed", "video.failed")
PAGE_MAX = MAX_LIMIT
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Resolution = Literal["360p", "480p", "540p", "720p", "1080p", "1K", "2K", "4K"]
AspectRatio = Literal["adaptive", "16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "9:21"]
VideoStatus = Literal["queued", "in_progress", "completed", "failed"]
EventType = Literal["video.completed", "video.failed"]
NonBlank = Meta(pattern=r"\S", description="at least one character that is not white space")
Url = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=2048,
        description="an https URL (plain http only inside RECEIVER_OUTBOUND_ALLOW)",
        examples=["https://hooks.example.com/videos"],
    ),
]


def _shape_of(kind: str) -> str:
    """receiver.rules.ids' pattern for `kind`, anchored (JSON Schema and msgspec patterns search)."""
    return f"^(?:{KINDS[kind].pattern})$"


# The id shapes are receiver.rules.ids' (its one parser judges path ids and headers the same way).
VideoId = Annotated[str, Meta(pattern=_shape_of("video"), description="a provider's video id")]
DeliveryId = Annotated[str, Meta(pattern=_shape_of("delivery"), description="dlv_<n>")]
EventId = Annotated[str, Meta(pattern=_shape_of("event"), description="evt_...")]
SubscriptionId = Annotated[str, Meta(pattern=_shape_of("subscription"), description="sub_...")]
SendId = Annotated[str, Meta(pattern=_shape_of("send"), description="snd_<n>")]
Limit = Annotated[int, Meta(ge=1, le=PAGE_MAX, description="page size")]
UnixTime = Annotated[int, Meta(description="Unix time, seconds")]


class Shape(Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """A request shape: unknown fields are refused (all of them are named in the 400)."""


class Answer(Struct, kw_only=True):
    """An answer shape (documented; the routes build these)."""


# -- requests --------------------------------------------------------------------------------


class VideoCreate(Shape):
    """The provider's request body (JSON or multipart/form-data)."""

    model: Annotated[str, NonBlank, Meta(max_length=200)]
    prompt: Annotated[str, NonBlank, Meta(max_length=32_000)]
    duration: Annotated[int, Meta(ge=1, le=3600, description="seconds")] | UnsetType = UNSET
    resolution: Resolution | UnsetType = UNSET
    aspect_ratio: AspectRatio | UnsetType = UNSET
    generate_audio: bool | UnsetType = UNSET
    seed: Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)] | UnsetType = UNSET
    watermark: bool | UnsetType = UNSET
    return_last_frame: bool | UnsetType = UNSET
    execution_expires_after: Annotated[int, Meta(ge=1, le=30 * 86_400, description="seconds")] | UnsetType = (
        UNSET
    )
    safety_identifier: Annotated[str, Meta(max_length=256)] | UnsetType = UNSET
    callback_url: (
        Annotated[
            str,
            Meta(
                max_length=2048,
                description="your own subscriber for this task's event (needs RECEIVER_CALLBACK_SECRET); "
                "never sent to the provider",
            ),
        ]
        | UnsetType
    ) = UNSET
    metadata: Annotated[dict[str, Any], Meta(description="at most 16 KiB as JSON")] | UnsetType = UNSET
    frame_images: Annotated[list[Any], Meta(description="passed through untouched")] | UnsetType = UNSET
    input_references: Annotated[list[Any], Meta(description="passed through untouched")] | UnsetType = UNSET


class SubscriptionCreate(Shape):
    url: Url
    events: Annotated[list[EventType], Meta(min_length=1, description="absent: every type")] | None = None
    secret: (
        Annotated[
            str,
            Meta(pattern=r"^whsec_", max_length=1024, description="whsec_<base64>; generated when absent"),
        ]
        | None
    ) = None


Instant = Annotated[int | float | str, Meta(description="Unix time (seconds) or an ISO-8601 string")]


class EventReplayRequest(Shape):
    subscription_id: SubscriptionId | None = None
    video_id: VideoId | None = None
    since: Instant | None = None
    until: Instant | None = None
    event_ids: Annotated[list[EventId], Meta(min_length=1, max_length=1000)] | None = None


class VideoListQuery(Shape):
    limit: Limit = DEFAULT_LIMIT
    after: Annotated[VideoId, Meta(description="the last id of the previous page")] | UnsetType = UNSET
    status: VideoStatus | UnsetType = UNSET


class DeliveryListQuery(Shape):
    limit: Limit = DEFAULT_LIMIT
    after: DeliveryId | UnsetType = UNSET
    video_id: VideoId | UnsetType = UNSET


class SubscriptionListQuery(Shape):
    limit: Limit = DEFAULT_LIMIT
    after: SubscriptionId | UnsetType = UNSET


class EventListQuery(Shape):
    limit: Limit = DEFAULT_LIMIT
    after: EventId | UnsetType = UNSET
    video_id: VideoId | UnsetType = UNSET
    type: EventType | UnsetType = UNSET


class DeadLetterQuery(Shape):
    limit: Limit = DEFAULT_LIMIT
    after: SendId | UnsetType = UNSET
    subscription_id: SubscriptionId | UnsetType = UNSET


class StreamQuery(Shape):
    last_event_id: Annotated[EventId, Meta(description="as the Last-Event-ID header")] | UnsetType = UNSET


class VideoContentQuery(Shape):
    variant: Annotated[str, Meta(pattern=r"^[a-z0-9_]{1,64}$", description="video, last_frame, ...")] = (
        "video"
    )


# -- answers ---------------------------------------------------------------------------------


class ErrorDetail(Answer):
    type: str
    code: str
    message: str
    param: str | None


class ErrorBody(Answer):
    error: ErrorDetail


class KeptFile(Answer):
    variant: str
    status: Literal["pending", "kept", "failed", "expired"]  # expired: RECEIVER_MEDIA_RETENTION passed
    size: int | None
    sha256: str | None
    content_type: str | None
    attempts: int
    error: str | None
    kept_at: UnixTime | None


class ReceiverInfo(Answer):
    resolved_by: Literal["webhook", "poll", "deadline"] | None
    deliveries: int
    duplicates: int
    polls: int
    anomalies: int
    submitted_at: UnixTime
    terminal_at: UnixTime | None
    next_poll_at: UnixTime | None
    files: list[KeptFile]  # result files kept (see GET /v1/videos/{id}/content)


class Video(Answer):
    """The provider's video object (its other fields pass through) plus the receiver's block."""

    id: str
    object: Literal["video"]
    status: VideoStatus
    model: str
    created_at: UnixTime
    receiver: ReceiverInfo
    prompt: str | UnsetType | None = UNSET
    parameters: dict[str, Any] | UnsetType = UNSET
    content: dict[str, Any] | UnsetType = UNSET
    error: dict[str, Any] | UnsetType | None = UNSET


class VideoList(Answer):
    object: Literal["list"]
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Delivery(Answer):
    id: str
    object: Literal["delivery"]
    video_id: str | None
    route: Literal["task", "workspace"]
    received_at: UnixTime
    last_seen_at: UnixTime
    verified_by: str
    dedupe_key: str
    event_type: str | None
    status: str | None
    outcome: str
    repeats: int
    headers: dict[str, str]
    body: Any  # null once pruned
    body_encoding: Literal["json", "text", "base64", "pruned"]  # pruned: RECEIVER_RETENTION passed


class DeliveryReplay(Delivery):
    replay_outcome: str


class DeliveryList(Answer):
    object: Literal["list"]
    data: list[Delivery]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeliveryAck(Answer):
    id: str
    duplicate: bool


class Subscription(Answer):
    id: str
    object: Literal["subscription"]
    url: str
    events: list[EventType] | None
    status: Literal["active", "paused", "disabled", "deleted"]
    created_at: UnixTime
    disabled_reason: str | None
    secret: str | UnsetType = UNSET
    deleted: bool | UnsetType = UNSET


class SubscriptionList(Answer):
    object: Literal["list"]
    data: list[Subscription]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Event(Answer):
    id: str
    object: Literal["event"]
    type: EventType
    created_at: UnixTime
    data: dict[str, Any]


class Attempt(Answer):
    at: UnixTime
    status: int | None
    latency_ms: float
    error: str | None


class Send(Answer):
    id: str
    object: Literal["send"]
    event_id: str
    video_id: str
    subscription_id: str
    replay_id: str | None
    status: str
    attempts: int
    next_attempt_at: UnixTime | None
    settled_at: UnixTime | None
    last_status: int | None
    last_error: str | None
    attempt_log: list[Attempt]


class EventDetail(Event):
    sends: list[Send]


class EventList(Answer):
    object: Literal["list"]
    data: list[Event]
    first_id: str | None
    last_id: str | None
    has_more: bool


class SendList(Answer):
    object: Literal["list"]
    data: list[Send]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Replay(Answer):
    id: str | None  # None when nothing was queued (there is then nothing to follow)
    object: Literal["replay"]
    events: int
    sends: int


class ReplayStatus(Answer):
    id: str
    object: Literal["replay"]
    sends: int
    by_status: dict[str, int]
    done: bool
    retrying: Annotated[int, Meta(description="sends that failed and wait to be tried again")]
    last_error: Annotated[str | None, Meta(description="the latest failed attempt's error")]


class Health(Answer):
    status: str
    problems: list[str] | UnsetType = UNSET


class DeliveryEvidence(Answer):
    delivered: int
    missed: int
    overdue: float
    expected_since_last_delivery: float
    last_delivery_at: float | None


class DeliveryHealth(Answer):
    object: Literal["delivery_health"]
    model: str
    state: Literal["arriving", "stopped", "unknown"]
    since: float | None
    checked_at: float | None
    evidence: DeliveryEvidence


class DeliveryHealthList(Answer):
    object: Literal["list"]
    data: list[DeliveryHealth]
    has_more: bool


class StateCount(Answer):
    status: Annotated[str, Meta(description="submitting, queued, in_progress, completed or failed")]
    resolved_by: Literal["webhook", "poll", "deadline"] | None
    count: int


class TaskStats(Answer):
    total: int
    open: Annotated[int, Meta(description="submitting, queued or in progress")]
    by_status: dict[str, int]
    by_resolved_by: dict[str, int]
    by_state: list[StateCount]
    oldest_open_created_at: UnixTime | None
    oldest_open_age_seconds: float | None


class SendStats(Answer):
    by_status: Annotated[dict[str, int], Meta(description="outbound sends: pending, delivered, failed, dead")]


class PruneStats(Answer):
    """The last whole pruning pass in the fleet: when it started, how long it took, and the rows
    it deleted by table (delivery_bodies: emptied, their rows and keys kept; files: kept files)."""

    last_run_at: UnixTime | None
    last_duration_seconds: float | None
    pruned: dict[str, int]


class RetentionStats(Answer):
    retention_seconds: int
    task_retention_seconds: int  # 0: task rows and dedupe keys are kept
    media_retention_seconds: int  # 0: kept files are kept
    prune_interval_seconds: int
    last_prune: PruneStats


class Stats(Answer):
    object: Literal["stats"]
    at: UnixTime
    tasks: TaskStats
    sends: SendStats
    retention: RetentionStats


class SendFailure(Answer):
    send_id: str
    event_id: str
    video_id: str
    status: int | None
    error: str
    at: UnixTime


class SubscriberHealth(Answer):
    """A subscriber's newest sends (100 at most, replays included) of the newest events
    (window_events of them), and all its dead letters (counted up to 1,000; dead_letters_more:
    there are more)."""

    object: Literal["subscriber_health"]
    subscription_id: str
    url: str
    status: Literal["active", "paused", "disabled", "deleted"]
    disabled_reason: str | None
    window_events: int
    sends: int
    delivered: int
    failed: int
    dead: int
    pending: int
    success_rate: Annotated[float, Meta(ge=0, le=1)] | None
    in_flight: int
    retrying: int
    dead_letters: int
    dead_letters_more: bool
    last_success_at: UnixTime | None
    last_error: SendFailure | None


class SubscriberHealthList(Answer):
    """Pages like the subscriptions it describes: first_id, last_id and after are subscription ids."""

    object: Literal["list"]
    data: list[SubscriberHealth]
    first_id: str | None
    last_id: str | None
    has_more: bool


# -- conversion ------------------------------------------------------------------------------

_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_FIELD = re.compile(r"field `([^`]+)`")
_TOP = re.compile(r"^\[?([A-Za-z0-9_\-]+)")


def _field_names(shape: type[Struct]) -> frozenset[str]:
    return frozenset(shape.__struct_fields__)


def _invalid(exc: msgspec.ValidationError) -> InvalidRequest:
    """msgspec's message names the failing path (`$.duration`, `$.metadata.x`); the param is its
    top-level field."""
    text = str(exc)
    param: str | None = None
    reason = text
    at = _AT.search(text)
    if at is not None:
        reason = text[: at.start()]
        top = _TOP.match(at.group(1))
        param = top.group(1) if top else None
    field = _FIELD.search(reason)
    if "missing required field" in reason and field is not None:
        path = at.group(1) if at is not None else ""
        param = param or field.group(1)
        message = f"{path + '.' if path else ''}{field.group(1)} is required"
        return InvalidRequest(message, param=param, code="missing_field")
    for kind in KINDS:
        if f"matching regex '{_shape_of(kind)}'" in reason:
            return InvalidRequest(f"{param} is not a valid {kind} id", param=param, code="invalid_id")
    message = f"{param}: {reason[0].lower()}{reason[1:]}" if param else reason
    return InvalidRequest(message, param=param)


def _refuse_unknown(shape: type[Struct], data: Mapping[str, Any]) -> None:
    unknown = sorted(set(data) - _field_names(shape))
    if unknown:
        raise InvalidRequest(
            f"unknown parameter{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
            param=unknown[0],
            code="unknown_parameter",
        )


def convert(data: Mapping[str, Any], shape: type[T]) -> T:
    """A parsed JSON object as `shape`, strictly: JSON booleans for booleans, JSON integers for
    integers, every unknown field named; 400 naming the field otherwise."""
    assert issubclass(shape, Struct)
    _refuse_unknown(shape, data)
    try:
        return msgspec.convert(data, shape, strict=True)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None


_INTEGER = re.compile(r"-?[0-9]{1,20}")


def _scalar_kind(annotation: msgspec.inspect.Type) -> str:
    """What a text value of this field becomes: int, bool or str (anything else stays text and
    fails or passes in the strict conversion)."""
    if isinstance(annotation, msgspec.inspect.Metadata):
        annotation = annotation.type
    types = annotation.types if isinstance(annotation, msgspec.inspect.UnionType) else (annotation,)
    for t in types:
        if isinstance(t, msgspec.inspect.Metadata):
            t = t.type
        if isinstance(t, msgspec.inspect.IntType):
            return "int"
        if isinstance(t, msgspec.inspect.BoolType):
            return "bool"
    return "str"


def _typed_text(kind: str, value: str) -> Any:
    if kind == "int" and _INTEGER.fullmatch(value):
        return int(value)
    if kind == "bool" and value in ("true", "false"):
        return value == "true"
    return value  # left as text: the strict conversion then names the field


def _kinds(shape: type[Struct]) -> dict[str, str]:
    info = msgspec.inspect.type_info(shape)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.name: _scalar_kind(f.type) for f in info.fields}


def convert_query(params: Mapping[str, str], shape: type[T]) -> T:
    """Query parameters as `shape`: integers as ASCII digits, booleans as true/false. Parameters
    the shape does not name are ignored (as most APIs do), unlike body fields."""
    assert issubclass(shape, Struct)
    kinds = _kinds(shape)
    data = {name: _typed_text(kinds[name], value) for name, value in params.items() if name in kinds}
    try:
        return msgspec.convert(data, shape, strict=True)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None


def convert_form(data: Mapping[str, Any], shape: type[T]) -> T:
    """Form fields (already nested from `a[b]` / `a[]` names) as `shape`: the top-level text
    values typed by the shape's fields, then the same strict conversion as JSON."""
    assert issubclass(shape, Struct)
    _refuse_unknown(shape, data)
    kinds = _kinds(shape)
    typed = {k: _typed_text(kinds[k], v) if isinstance(v, str) else v for k, v in data.items()}
    try:
        return msgspec.convert(typed, shape, strict=True)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None


def given(value: T | UnsetType) -> T | None:
    """None for a field that was not given."""
    return None if isinstance(value, UnsetType) else value


def to_dict(value: Struct) -> dict[str, Any]:
    """The fields that were given (UNSET ones left out), as plain JSON values."""
    result: dict[str, Any] = msgspec.to_builtins(value)
    return result
