"""Property tests over the pure parsers: whatever comes in, the only exception out is the
module's own error type (a 4xx upstream), and what is accepted keeps the module's promise."""

from __future__ import annotations

import contextlib
import hashlib
import json
import string
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.errors import InvalidRequest
from receiver.outbound.addresses import OutboundURLError, address_allowed, check_url, host_address
from receiver.rules import jsonpolicy
from receiver.rules.ids import KINDS, new_id, parse_id
from receiver.rules.payloads import PayloadError, normalise, normalise_status
from receiver.rules.redact import find_token, is_secret_header, redact_headers, strip_callbacks
from receiver.rules.signatures import SecretFormatError, SignatureError, parse_key, verify
from receiver.settings import Settings, SettingsError

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_700_000_000

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
# Text that looks like the things it is meant to break: digits of other scripts, surrogates, controls.
hostile_text = st.text(
    alphabet=st.sampled_from(
        [*string.printable, "²", "٣", "\uff11", "\ud800", "\udfff", "\x00", "é", "🦊", "\u202e"]
    ),
    max_size=40,
) | st.text(max_size=40)


# -- JSON policy ----------------------------------------------------------------------------


def _held_to_policy(value: Any) -> None:
    """What the policy promises of anything it accepts: every library we use can write it."""
    orjson.dumps(value)
    json.dumps(value, allow_nan=False).encode("utf-8")


@FAST
@given(st.binary(max_size=200) | hostile_text.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_json_policy_bytes_raise_only_its_error(data: bytes) -> None:
    try:
        value = jsonpolicy.loads(data)
    except jsonpolicy.JSONPolicyError:
        return
    _held_to_policy(value)


@FAST
@given(json_values)
def test_json_policy_on_any_json_text(value: Any) -> None:
    text = json.dumps(value)  # Python writes NaN, Infinity, lone surrogates, big integers
    try:
        parsed = jsonpolicy.loads(text)
    except jsonpolicy.JSONPolicyError:
        return
    _held_to_policy(parsed)


@FAST
@given(st.integers(min_value=1, max_value=400), st.sampled_from(["[", '{"a":']))
def test_json_policy_depth(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    text = opener * depth + "1" + closer * depth
    for data in (text, text.encode()):
        if depth <= jsonpolicy.MAX_DEPTH:
            assert jsonpolicy.loads(data) is not None
        else:
            with pytest.raises(jsonpolicy.JSONPolicyError):
                jsonpolicy.loads(data)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": NaN}',
        '{"a": Infinity}',
        '{"a": -Infinity}',
        '{"a": 1e400}',
        '{"a": "\\ud800"}',
        '{"a": "\\u0000"}',
        '{"a": 18446744073709551616}',
        '{"a": -9223372036854775809}',
        "[" * 5000 + "]" * 5000,
    ],
)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_json_policy_refuses(text: str, as_bytes: bool) -> None:
    with pytest.raises(jsonpolicy.JSONPolicyError):
        jsonpolicy.loads(text.encode() if as_bytes else text)


@pytest.mark.parametrize(
    "text", ['{"a": 18446744073709551615}', '{"a": -9223372036854775808}', '{"a": 1e19}']
)
def test_json_policy_keeps_64_bit_numbers(text: str) -> None:
    assert jsonpolicy.loads(text) == json.loads(text)


# -- payloads -------------------------------------------------------------------------------


@FAST
@given(json_values)
def test_normalise_raises_only_payload_error(value: Any) -> None:
    with contextlib.suppress(PayloadError):
        normalise(value)


envelopes = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["video.completed", "video.failed", "video.generation.cancelled", "x"])
        | st.text()
    },
    optional={
        "id": json_values,
        "object": st.just("event") | json_values,
        "created_at": json_values,
        "data": st.fixed_dictionaries(
            {"id": json_values},
            optional={"status": json_values, "error": json_values, "content": json_values},
        )
        | json_values,
    },
)


@FAST
@given(envelopes)
def test_normalise_envelopes_raise_only_payload_error(value: dict[str, Any]) -> None:
    try:
        update = normalise(value)
    except PayloadError:
        return
    assert update.video_id is None or isinstance(update.video_id, str)


@FAST
@given(json_values)
def test_normalise_status_raises_only_payload_error(value: Any) -> None:
    with contextlib.suppress(PayloadError):
        assert normalise_status(value) in ("queued", "in_progress", "completed", "failed")


# -- signatures -----------------------------------------------------------------------------

header_names = st.sampled_from(
    [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "svix-id",
        "svix-timestamp",
        "svix-signature",
        "x-webhook-signature",
        "x-openrouter-signature",
        "x-openrouter-idempotency-key",
    ]
)
KEYS = (
    parse_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    parse_key("whpk_" + "A" * 43),
    parse_key("raw:secret"),
)


@FAST
@given(st.dictionaries(header_names, hostile_text, max_size=5), st.binary(max_size=64), st.integers(0, 600))
def test_verify_raises_only_signature_error(headers: dict[str, str], body: bytes, tolerance: int) -> None:
    with contextlib.suppress(SignatureError):
        verify(headers, body, KEYS, now=NOW, tolerance=tolerance)


@FAST
@given(st.sampled_from(["whsec_", "whpk_", "raw:", ""]), hostile_text)
def test_parse_key_raises_only_secret_format_error(prefix: str, rest: str) -> None:
    with contextlib.suppress(SecretFormatError):
        parse_key(prefix + rest)


# -- settings -------------------------------------------------------------------------------

VARIABLES = [
    "RECEIVER_HOST",
    "RECEIVER_PORT",
    "RECEIVER_DATABASE_URL",
    "RECEIVER_PUBLIC_URL",
    "RECEIVER_PROVIDER_URL",
    "RECEIVER_WEBHOOK_SECRETS",
    "RECEIVER_SIGNATURE_TOLERANCE",
    "RECEIVER_ALLOW_UNSIGNED",
    "RECEIVER_MAX_BODY_BYTES",
    "RECEIVER_POLL_AFTER",
    "RECEIVER_FANOUT_RETRY_SCHEDULE",
    "RECEIVER_CALLBACK_SECRET",
    "RECEIVER_OUTBOUND_ALLOW",
    "RECEIVER_MAX_HEADER_BYTES",
    "RECEIVER_HEADER_TIMEOUT",
    "RECEIVER_KEEPALIVE_TIMEOUT",
    "RECEIVER_MAX_CONNECTIONS",
]


@FAST
@given(st.dictionaries(st.sampled_from(VARIABLES), hostile_text, max_size=4))
def test_settings_raise_only_settings_error_naming_a_variable(env: dict[str, str]) -> None:
    try:
        Settings.from_env(env)
    except SettingsError as exc:
        assert str(exc).startswith("RECEIVER_"), exc
        assert "\n" not in str(exc)


# -- ids -----------------------------------------------------------------------------------


@FAST
@given(st.sampled_from(list(KINDS)), hostile_text)
def test_parse_id_raises_only_invalid_request(kind: str, value: str) -> None:
    with contextlib.suppress(InvalidRequest):
        assert parse_id(kind, value) == value and value.isascii()


@pytest.mark.parametrize(
    "value", ["dlv_²", "dlv_", "dlv_1x", "dlv_-1", "dlv_" + "9" * 19, "evt_é", "sub_a b"]
)
def test_malformed_ids(value: str) -> None:
    kind = {"dlv": "delivery", "evt": "event", "sub": "subscription"}[value[:3]]
    with pytest.raises(InvalidRequest):
        parse_id(kind, value)


@pytest.mark.parametrize(
    ("kind", "prefix"), [("event", "evt_"), ("subscription", "sub_"), ("replay", "rpl_")]
)
def test_minted_ids_are_ids_parse_id_accepts(kind: str, prefix: str) -> None:
    minted = {new_id(kind) for _ in range(50)}
    assert len(minted) == 50  # random: never the same twice in practice
    assert all(m.startswith(prefix) and parse_id(kind, m) == m for m in minted)


# -- outbound URLs --------------------------------------------------------------------------

hosts = (
    st.sampled_from(
        [
            "127.0.0.1",
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "127.1",
            "localhost.",
            "a.localhost",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "[2002:7f00:1::]",
            "100.64.0.1",
            "10.0.0.1",
            "169.254.169.254",
            "example.com",
        ]
    )
    | hostile_text
)


@FAST
@given(
    st.sampled_from(["https://", "http://", "ftp://", ""]), hosts, st.sampled_from(["", ":443", ":x", "/p?q"])
)
def test_check_url_raises_only_its_error(scheme: str, host: str, tail: str) -> None:
    url = f"{scheme}{host}{tail}"
    try:
        check_url(url, ())
    except OutboundURLError:
        return
    from urllib.parse import urlsplit

    address = host_address(urlsplit(url).hostname or "")
    assert address is None or address_allowed(address, ())


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "127.0.0.1.",
        "localhost",
        "localhost.",
        "api.localhost",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[2002:7f00:1::1]",
        "[2002:a00:1::1]",
        "[64:ff9b::a00:1]",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "240.0.0.1",
        "[fe80::1]",
        "[fc00::1]",
        "999.1.1.1",
    ],
)
def test_private_spellings_are_refused(host: str) -> None:
    with pytest.raises(OutboundURLError):
        check_url(f"https://{host}/hook", ())


def test_allow_list_lets_loopback_in_and_plain_http_only_there() -> None:
    import ipaddress

    allow = (ipaddress.ip_network("127.0.0.0/8"),)
    assert check_url("http://127.0.0.1:9/hook", allow)
    assert check_url("http://[::ffff:127.0.0.1]:9/hook", allow)
    with pytest.raises(OutboundURLError):
        check_url("http://example.com/hook", allow)
    assert check_url("https://example.com/hook", ())


# -- what never leaves ----------------------------------------------------------------------

TOKEN = "Zr3kq9X2mVbN7cLd0sPe4uYw8tAj6hGf1oQiRnKx5Ez"


@FAST
@given(json_values, st.sampled_from(["https://r.example/webhooks/", "http://127.0.0.1:8000/webhooks/", ""]))
def test_strip_callbacks_removes_the_token_wherever_it_sits(value: Any, prefix: str) -> None:
    planted = {
        "callback_url": prefix + TOKEN,
        "error": {"message": f"POST {prefix}{TOKEN} failed"},
        "x": value,
    }
    stripped = strip_callbacks(planted, (TOKEN,))
    assert TOKEN not in json.dumps(stripped)
    if prefix:
        assert TOKEN not in json.dumps(strip_callbacks(planted))  # by shape, without knowing it


@FAST
@given(json_values, st.sampled_from(["", "tok=", "cb_", "x"]), st.sampled_from(["", " ", "&next=1", "_v2"]))
def test_find_token_finds_a_bare_copy_by_its_hash_alone(value: Any, before: str, after: str) -> None:
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    assert find_token({"x": value, "metadata": {"m": [f"{before}{TOKEN}{after}"]}}, digest) == TOKEN
    assert find_token(value, digest) is None  # generated values never hold it
    assert find_token({"blob": "A" * 200 + TOKEN}, digest) is None  # a blob is not searched


@pytest.mark.parametrize(
    "name",
    [
        "authorization",
        "cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "x-goog-api-key",
        "x-amz-security-token",
        "proxy-authorization",
        "x-client-secret",
        "set-cookie",
        "x-session-id",
    ],
)
def test_credential_headers_are_redacted(name: str) -> None:
    assert redact_headers({name: "s3cr3t"}) == {name: "[redacted]"}


@pytest.mark.parametrize(
    "name", ["webhook-signature", "webhook-id", "content-type", "x-openrouter-idempotency-key", "user-agent"]
)
def test_ordinary_headers_are_kept(name: str) -> None:
    assert not is_secret_header(name)
