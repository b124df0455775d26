"""One error hierarchy for the service; app.py maps it to HTTP answers in one place.

ApiError
 ├── InvalidRequest   400  bad input: the message names the field (param)
 ├── Unauthorized     401  missing or wrong API key, bad webhook signature
 ├── Forbidden        403  a write from another origin (cross_origin)
 ├── NotFound         404
 ├── Conflict         409  e.g. an idempotent submit still running, a pruned delivery replayed
 ├── Gone             410  a kept file whose retention ended (content_expired)
 ├── PayloadTooLarge  413
 ├── UnsupportedMediaType 415  a write whose Content-Type the route does not take
 ├── Misdirected      421  a Host this receiver does not answer for (DNS rebinding)
 ├── UpstreamError    502/504 the provider failed us, or answered with something unusable
 └── Unavailable      503  the store cannot take a write right now (retry)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "Conflict",
    "Forbidden",
    "Gone",
    "InvalidRequest",
    "Misdirected",
    "NotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "UpstreamError",
]


class ApiError(Exception):
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
