"""Every error the receiver raises on purpose: one tree, in this module, mapped to HTTP in one
place (`to_api_error`, used by the app's handler and by the ack path).

ReceiverError
 ├── ApiError               an answer for the client: status, type, code, message, param
 │    ├── InvalidRequest        400  bad input: the message names the field (param)
 │    ├── Unauthorized          401  missing or wrong API key, bad webhook signature
 │    ├── Forbidden             403  a write from another origin (cross_origin)
 │    ├── NotFound              404
 │    ├── Conflict              409  e.g. a submit still running or unconfirmed, a pruned delivery replayed
 │    ├── Gone                  410  a kept file whose retention ended (content_expired)
 │    ├── PayloadTooLarge       413
 │    ├── UnsupportedMediaType  415  a write whose Content-Type the route does not take
 │    ├── Misdirected           421  a Host this receiver does not answer for (DNS rebinding)
 │    ├── UpstreamError         502/504  the provider failed us, or its answer is unusable
 │    └── Unavailable           503  the store cannot serve the request right now (retry)
 ├── StoreError             the store could not do what was asked (nothing was written)
 │    ├── StoreUnavailable      -> 503 store_unavailable (disk full, locked, closed, a lost server)
 │    ├── UnknownToken          -> 404 unknown_token: no task owns this callback token
 │    ├── WrongVideo            -> 400 wrong_video: a per-task delivery names another video
 │    ├── UnknownCursor         -> 400: a list's `after` names no row
 │    └── OverLimit             -> 400: a write would pass its cap (the route names the code)
 ├── ProviderError          the provider gave no usable video object (the submit route maps its
 │                          status: 4xx refusals, 429, 502, 504, or submit_unconfirmed)
 ├── CallError              an outbound call broke its budget (receiver.outbound.call) -> 502 (504: too long)
 │    ├── CallTimeout           too long (also a TimeoutError)
 │    │    ├── DeadlineExceeded     its total deadline passed
 │    │    └── Stalled              no byte for the stall interval
 │    ├── TooLarge              its answer passed the cap
 │    └── BadEncoding           its answer is in an encoding we cannot undo
 ├── SignatureError         -> 401 invalid_signature: not authentic
 │    └── NoSignature           -> 401 missing_signature
 ├── JSONPolicyError        -> 400 invalid_json: not JSON, or JSON outside the policy
 ├── PayloadError           -> 400 invalid_payload: JSON, but none of the accepted shapes
 ├── OutboundURLError       -> 400 (its code): a URL we may not send to
 ├── BlockedAddress         a host that resolves to an address we may not send to (connect time)
 ├── SecretFormatError      a secret that is not whsec_, whpk_ or raw: (never quoted)
 └── SettingsError          a setting we cannot use: the message names the variable

The ones that are also ValueError (input that cannot be used) or OSError (BlockedAddress, for the
HTTP client's resolver) say so in their bases, so libraries that catch those keep working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "BadEncoding",
    "BlockedAddress",
    "CallError",
    "CallTimeout",
    "Conflict",
    "DeadlineExceeded",
    "Forbidden",
    "Gone",
    "InvalidRequest",
    "JSONPolicyError",
    "Misdirected",
    "NoSignature",
    "NotFound",
    "OutboundURLError",
    "OverLimit",
    "PayloadError",
    "PayloadTooLarge",
    "ProviderError",
    "ReceiverError",
    "SecretFormatError",
    "SettingsError",
    "SignatureError",
    "Stalled",
    "StoreError",
    "StoreUnavailable",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnknownCursor",
    "UnknownToken",
    "UnsupportedMediaType",
    "UpstreamError",
    "WrongVideo",
    "to_api_error",
]


class ReceiverError(Exception):
    """Base of every error the receiver raises on purpose."""


class ApiError(ReceiverError):
    status = 500
    type = "api_error"
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "code": self.code, "message": self.message, "param": self.param}}


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(ApiError):
    status = 401
    type = "authentication_error"
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(ApiError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class Gone(ApiError):
    status = 410
    type = "invalid_request_error"
    code = "gone"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        # The rest of the body may still be on its way: close rather than read it to the end.
        self.headers.setdefault("connection", "close")


class UnsupportedMediaType(ApiError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class Misdirected(ApiError):
    status = 421
    type = "invalid_request_error"
    code = "misdirected"


class UpstreamError(ApiError):
    status = 502
    type = "api_error"
    code = "provider_error"


class Unavailable(ApiError):
    status = 503
    type = "api_error"
    code = "unavailable"


# -- the store -------------------------------------------------------------------------------


class StoreError(ReceiverError):
    """Base of every error the store raises on purpose."""


class StoreUnavailable(StoreError):
    """The store cannot take writes right now (disk full, locked, closed)."""


class UnknownToken(StoreError):
    """No task owns this callback token."""


class WrongVideo(StoreError):
    """A per-task delivery names a video other than the task's."""


class UnknownCursor(StoreError):
    """A list's `after` names no row."""


class OverLimit(StoreError):
    """A write would pass the cap its caller gave: nothing was written. The count stops as soon
    as it passes the cap, so `count` is at most `limit + 1`: "more than `limit`"."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"more than {limit} ({count} counted)")
        self.count = count
        self.limit = limit


# -- the provider and other outbound calls ---------------------------------------------------


class ProviderError(ReceiverError):
    """The provider did not give us a usable video object.

    `status` is the provider's HTTP status (None for timeouts and connection failures);
    `retry_after` its Retry-After in seconds when it sent one; `sent` False when the request
    never reached the provider (no connection), so it cannot have acted on it.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        timeout: bool = False,
        sent: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.timeout = timeout
        self.sent = sent

    @property
    def ambiguous(self) -> bool:
        """The provider may have acted on the request although we have no usable answer: a
        timeout or a broken connection after sending, a 5xx, or a 2xx we cannot read. A 4xx
        is a refusal, and a request never sent was never seen."""
        if not self.sent:
            return False
        return self.status is None or self.status >= 500 or 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in (408, 409, 425, 429) or self.status >= 500


class CallError(ReceiverError):
    """An outbound call broke its budget or sent an answer we cannot read."""


class CallTimeout(CallError, TimeoutError):
    """The call took too long."""


class DeadlineExceeded(CallTimeout):
    """The call's total deadline passed."""


class Stalled(CallTimeout):
    """No byte came for the stall interval."""


class TooLarge(CallError):
    """The answer passed its cap."""


class BadEncoding(CallError):
    """The answer is in a Content-Encoding we did not offer or cannot undo."""


class OutboundURLError(ReceiverError, ValueError):
    """The URL may not be sent to; `code` says which rule refused it."""

    def __init__(self, message: str, code: str = "url_not_allowed") -> None:
        super().__init__(message)
        self.code = code


class BlockedAddress(ReceiverError, OSError):
    """The host resolves to an address we may not send to (checked at connect time)."""


# -- input -----------------------------------------------------------------------------------


class SignatureError(ReceiverError):
    """The delivery is not authentic: bad, stale, missing or malformed signature."""


class NoSignature(SignatureError):
    """The delivery carries no signature headers of any scheme we know."""


class JSONPolicyError(ReceiverError, ValueError):
    """Not JSON, or JSON outside the policy; the message says which rule."""


class PayloadError(ReceiverError, ValueError):
    """The body is JSON but not one of the accepted shapes; the message says why."""


class SecretFormatError(ReceiverError, ValueError):
    """A configured secret is not whsec_, whpk_ or raw: (the message never quotes it)."""


class SettingsError(ReceiverError, ValueError):
    """A setting has a value we cannot use; the message names the variable."""


# -- the one mapping -------------------------------------------------------------------------


def to_api_error(exc: ReceiverError) -> ApiError:
    """What the client is told about `exc`: the one place errors become HTTP answers. Errors
    no route expects to reach a client (a setting, a secret's format) are a 500, logged."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, StoreUnavailable):
        return Unavailable(
            "the store cannot serve this request right now; retry",
            code="store_unavailable",
            headers={"retry-after": "1"},
        )
    if isinstance(exc, UnknownToken):
        return NotFound("unknown callback URL", code="unknown_token")
    if isinstance(exc, WrongVideo):
        return InvalidRequest("this callback URL belongs to another video", code="wrong_video")
    if isinstance(exc, UnknownCursor):
        return InvalidRequest("after names nothing in this list", param="after", code="unknown_cursor")
    if isinstance(exc, OverLimit):
        return InvalidRequest(f"this would pass a limit: {exc}", code="over_limit")
    if isinstance(exc, NoSignature):
        return Unauthorized("missing webhook signature", code="missing_signature")
    if isinstance(exc, SignatureError):
        return Unauthorized(f"invalid webhook signature: {exc}", code="invalid_signature")
    if isinstance(exc, JSONPolicyError):
        return InvalidRequest(f"body is not acceptable JSON: {exc}", code="invalid_json")
    if isinstance(exc, PayloadError):
        return InvalidRequest(str(exc), code="invalid_payload")
    if isinstance(exc, OutboundURLError):
        return InvalidRequest(str(exc), code=exc.code)
    if isinstance(exc, ProviderError):
        return _provider_failure(exc)
    if isinstance(exc, CallTimeout):
        return UpstreamError(f"an outside call took too long: {exc}", status=504, code="upstream_timeout")
    if isinstance(exc, CallError):
        return UpstreamError(f"an outside call failed: {exc}", code="upstream_error")
    return ApiError("internal error")


def _provider_failure(exc: ProviderError) -> ApiError:
    if exc.timeout:
        return UpstreamError("the provider did not answer in time", status=504, code="provider_timeout")
    if exc.status in (400, 404, 409, 422):
        return InvalidRequest(f"the provider rejected the request: {exc.message}", code="provider_rejected")
    if exc.status == 429:
        headers = {"retry-after": str(int(exc.retry_after))} if exc.retry_after is not None else None
        return UpstreamError(
            "the provider is rate limiting us; retry later",
            status=429,
            code="provider_rate_limited",
            headers=headers,
        )
    if exc.status in (401, 403):
        return UpstreamError(
            "the provider refused our credentials (RECEIVER_PROVIDER_API_KEY)", code="provider_auth"
        )
    return UpstreamError(f"the provider failed: {exc.message}")
