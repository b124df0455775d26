"""The one mapping from errors to HTTP answers (receiver.errors.to_api_error), as a table."""

from __future__ import annotations

import pytest

from receiver import errors as e


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (e.InvalidRequest("bad"), 400, "invalid_request"),
        (e.Conflict("busy", code="submit_unconfirmed"), 409, "submit_unconfirmed"),
        (e.StoreUnavailable("disk full"), 503, "store_unavailable"),
        (e.UnknownToken("x"), 404, "unknown_token"),
        (e.WrongVideo("v"), 400, "wrong_video"),
        (e.UnknownCursor("c"), 400, "unknown_cursor"),
        (e.OverLimit(11, 10), 400, "over_limit"),
        (e.NoSignature("none"), 401, "missing_signature"),
        (e.SignatureError("bad mac"), 401, "invalid_signature"),
        (e.JSONPolicyError("NaN"), 400, "invalid_json"),
        (e.PayloadError("no id"), 400, "invalid_payload"),
        (e.OutboundURLError("private", code="url_not_allowed"), 400, "url_not_allowed"),
        (e.ProviderError("slow", timeout=True), 504, "provider_timeout"),
        (e.ProviderError("no", status=422), 400, "provider_rejected"),
        (e.ProviderError("later", status=429, retry_after=7), 429, "provider_rate_limited"),
        (e.ProviderError("who", status=401), 502, "provider_auth"),
        (e.ProviderError("oops", status=500), 502, "provider_error"),
        (e.DeadlineExceeded("late"), 504, "upstream_timeout"),
        (e.Stalled("quiet"), 504, "upstream_timeout"),
        (e.TooLarge("big"), 502, "upstream_error"),
        (e.SettingsError("RECEIVER_X: bad"), 500, "internal_error"),
    ],
)
def test_to_api_error(error: e.ReceiverError, status: int, code: str) -> None:
    answer = e.to_api_error(error)
    assert (answer.status, answer.code) == (status, code)
    assert set(answer.body()["error"]) == {"type", "code", "message", "param"}


def test_every_error_raised_on_purpose_is_one_tree() -> None:
    for name in e.__all__:
        value = getattr(e, name)
        if isinstance(value, type):
            assert issubclass(value, e.ReceiverError), name


def test_store_unavailable_says_when_to_retry_and_rate_limits_pass_the_providers_word() -> None:
    assert e.to_api_error(e.StoreUnavailable("x")).headers == {"retry-after": "1"}
    assert e.to_api_error(e.ProviderError("x", status=429, retry_after=7)).headers == {"retry-after": "7"}
