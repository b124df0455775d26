"""The verifier against the official test vectors and every scheme's failure modes."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.rules.signatures import (
    Key,
    NoSignature,
    SecretFormatError,
    SignatureError,
    fingerprint,
    parse_key,
    sign_v1,
    verify,
)

TV1_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TV1_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TV1_TS = 1614265330
TV1_BODY = b'{"test": 2432232314}'
TV1_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def std(msg_id: str, ts: int | str, signature: str, prefix: str = "webhook-") -> dict[str, str]:
    return {f"{prefix}id": msg_id, f"{prefix}timestamp": str(ts), f"{prefix}signature": signature}


def keys(*texts: str) -> list[Key]:
    return [parse_key(t) for t in texts]


# -- official vectors -----------------------------------------------------------------------


def test_tv1_sign_matches_official_vector() -> None:
    assert sign_v1(parse_key(TV1_SECRET).material, TV1_ID, TV1_TS, TV1_BODY) == TV1_SIG


@pytest.mark.parametrize("prefix", ["webhook-", "svix-", "x-webhook-"])
def test_tv1_verifies_under_every_header_family(prefix: str) -> None:
    result = verify(
        std(TV1_ID, TV1_TS, TV1_SIG, prefix), TV1_BODY, keys(TV1_SECRET), now=TV1_TS, tolerance=300
    )
    assert (result.scheme, result.message_id, result.timestamp) == ("standard-v1", TV1_ID, TV1_TS)


@pytest.mark.parametrize(
    "signature",
    [
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",  # last character changed
        "v1,dawfeoifkpqwoekfpqoekf",
        "v1,",
        TV1_SIG[:-8],  # truncated
        "v2," + TV1_SIG[3:],  # unknown version
        "",
    ],
)
def test_tv1_negative_cases(signature: str) -> None:
    with pytest.raises(SignatureError):
        verify(std(TV1_ID, TV1_TS, signature), TV1_BODY, keys(TV1_SECRET), now=TV1_TS, tolerance=300)


def test_tv1_multi_signature_header_passes_if_any_entry_is_valid() -> None:
    other = "Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
    header = f"v1,{other} v2,{other} {TV1_SIG} v1,{other}"
    assert (
        verify(std(TV1_ID, TV1_TS, header), TV1_BODY, keys(TV1_SECRET), now=TV1_TS, tolerance=300).scheme
        == "standard-v1"
    )


def test_a_verification_names_the_key_that_matched_by_fingerprint() -> None:
    """The matched key scopes deduplication on POST /webhooks: stable, distinct per key, and
    nothing of the secret in it."""
    other = "whsec_" + base64.b64encode(b"another provider").decode()
    both = keys(other, TV1_SECRET)
    result = verify(std(TV1_ID, TV1_TS, TV1_SIG), TV1_BODY, both, now=TV1_TS, tolerance=300)
    assert result.key_id == fingerprint(both[1]) != fingerprint(both[0])
    assert result.key_id == fingerprint(parse_key(TV1_SECRET))  # the same key, parsed again
    assert TV1_SECRET[len("whsec_") :] not in result.key_id and len(result.key_id) == 16
    raw = parse_key("raw:shared")
    signed = hmac.new(b"shared", f"{TV1_TS},".encode() + TV1_BODY, hashlib.sha256).hexdigest()
    headers = {"x-openrouter-signature": f"t={TV1_TS},v1={signed}"}
    routed = verify(headers, TV1_BODY, [*both, raw], now=TV1_TS, tolerance=300)
    assert routed.key_id == fingerprint(raw)


@pytest.mark.parametrize("delta", [-301, 301])
def test_tv1_outside_tolerance_fails_both_ways(delta: int) -> None:
    with pytest.raises(SignatureError, match=r"too (old|new)"):
        verify(std(TV1_ID, TV1_TS, TV1_SIG), TV1_BODY, keys(TV1_SECRET), now=TV1_TS - delta, tolerance=300)


@pytest.mark.parametrize("timestamp", ["hello", "", "1.5", "1614265330x", "-1614265330"])
def test_tv1_malformed_timestamp_fails(timestamp: str) -> None:
    with pytest.raises(SignatureError):
        verify(std(TV1_ID, timestamp, TV1_SIG), TV1_BODY, keys(TV1_SECRET), now=TV1_TS, tolerance=300)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_tv1_missing_header_fails(missing: str) -> None:
    headers = std(TV1_ID, TV1_TS, TV1_SIG)
    del headers[missing]
    with pytest.raises(SignatureError):
        verify(headers, TV1_BODY, keys(TV1_SECRET), now=TV1_TS, tolerance=300)


@pytest.mark.parametrize("secret", ["", "whsec_", "whsec_!!!notbase64", "MfKQ9r8GKYq", "whpk_AAAA"])
def test_bad_secrets_are_rejected(secret: str) -> None:
    with pytest.raises(SecretFormatError):
        parse_key(secret)


@pytest.mark.parametrize(
    "unpadded", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr"]
)
def test_unpadded_secrets_verify_like_their_padded_form(unpadded: str) -> None:
    padded = unpadded + "=" * (-len(unpadded) % 4)
    signature = sign_v1(base64.b64decode(padded), TV1_ID, TV1_TS, TV1_BODY)
    assert (
        verify(
            std(TV1_ID, TV1_TS, signature), TV1_BODY, keys("whsec_" + unpadded), now=TV1_TS, tolerance=300
        ).scheme
        == "standard-v1"
    )


def test_tv2_rust_vector() -> None:
    secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
    body = b'{"email":"test@example.com","username":"test_user"}'
    msg_id, ts = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553
    good = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
    assert sign_v1(parse_key(secret).material, msg_id, ts, body) == good
    assert verify(std(msg_id, ts, good), body, keys(secret), now=ts, tolerance=300)
    with pytest.raises(SignatureError):
        verify(
            std(msg_id, ts, "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU="),
            body,
            keys(secret),
            now=ts,
            tolerance=300,
        )


TV3_SECRET = "whsec_RdvaYFYUXuIFuEbvZHwMfYFhUf7aMYjYcmM24+Aj40c="
TV3_ID = "wh_685c059ae39c8190af8c71ed1022a24d"
TV3_TS = 1750861210
TV3_BODY = (
    b'{"id": "evt_685c059ae3a481909bdc86819b066fb6", "object": "event", "created_at": 1750861210,'
    b' "type": "response.completed", "data": {"id": "resp_123"}}'
)
TV3_SIG = "v1,gUAg4R2hWouRZqRQG4uJypNS8YK885G838+EHb4nKBY="


def test_tv3_openai_vector() -> None:
    assert verify(std(TV3_ID, TV3_TS, TV3_SIG), TV3_BODY, keys(TV3_SECRET), now=TV3_TS, tolerance=300)
    header = f"v1,invalid_signature {TV3_SIG}"
    assert verify(std(TV3_ID, TV3_TS, header), TV3_BODY, keys(TV3_SECRET), now=TV3_TS, tolerance=300)
    with pytest.raises(SignatureError):
        verify(
            std(TV3_ID, TV3_TS, "v1,invalid_signature1 v1,invalid_signature2"),
            TV3_BODY,
            keys(TV3_SECRET),
            now=TV3_TS,
            tolerance=300,
        )


@pytest.mark.parametrize(
    ("tolerance", "delta", "ok"),
    [
        (300, -300, True),
        (300, 300, True),
        (300, -301, False),
        (300, 301, False),
        (0, 0, True),
        (0, 1, False),
        (0, -1, False),
    ],
)
def test_tv3_replay_window_boundaries(tolerance: int, delta: int, ok: bool) -> None:
    headers = std(TV3_ID, TV3_TS, TV3_SIG)
    if ok:
        verify(headers, TV3_BODY, keys(TV3_SECRET), now=TV3_TS + delta, tolerance=tolerance)
    else:
        with pytest.raises(SignatureError):
            verify(headers, TV3_BODY, keys(TV3_SECRET), now=TV3_TS + delta, tolerance=tolerance)


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [
        (
            "whpk_ZlN4eg7dSSqi0moX9hQUk3orrOouK3QVQSlJa248c/g=",
            "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==",
        ),
        (
            "whpk_iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=",
            "v1a,Ykcu7AtGZGmZxFEH1Gaa2Nd7feY/CTuruoL4fqgnKwfbHU4DhemoVHZdvGfIvKvn4BIgwktLGGPGIr/i9nK7AA==",
        ),
    ],
)
def test_tv4_ed25519_vectors(public_key: str, signature: str) -> None:
    result = verify(std(TV1_ID, TV1_TS, signature), TV1_BODY, keys(public_key), now=TV1_TS, tolerance=300)
    assert result.scheme == "standard-v1a"
    # Mixed header: either key type verifies it.
    mixed = f"{TV1_SIG} {signature}"
    assert (
        verify(std(TV1_ID, TV1_TS, mixed), TV1_BODY, keys(public_key), now=TV1_TS, tolerance=300).scheme
        == "standard-v1a"
    )
    assert (
        verify(std(TV1_ID, TV1_TS, mixed), TV1_BODY, keys(TV1_SECRET), now=TV1_TS, tolerance=300).scheme
        == "standard-v1"
    )
    tampered = TV1_BODY.replace(b"2432232314", b"2432232315")
    with pytest.raises(SignatureError):
        verify(std(TV1_ID, TV1_TS, signature), tampered, keys(public_key), now=TV1_TS, tolerance=300)


def test_tv4_seed_derives_published_public_key() -> None:
    seed = base64.b64decode("VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=")
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert "whpk_" + base64.b64encode(public).decode() == "whpk_ZlN4eg7dSSqi0moX9hQUk3orrOouK3QVQSlJa248c/g="


TV5_BODY = (
    b'{"type":"video.generation.completed","created_at":"2026-04-24T12:00:00.000Z","data":{"id":"abc123",'
    b'"status":"completed","generation_id":"gen-xyz789","model":"google/veo-3.1","unsigned_urls":'
    b'["https://openrouter.ai/api/v1/videos/abc123/content?index=0"],"usage":{"cost":0.5,"is_byok":false}}}'
)
TV5_HEADER = "t=1777032000,v1=420a1301a3990f13b380bd39d13ec5c6e1824bf1778484f7bb61af0bafa53162"


def test_tv5_openrouter_vector() -> None:
    headers = {"x-openrouter-signature": TV5_HEADER, "x-openrouter-idempotency-key": "abc123-completed"}
    result = verify(headers, TV5_BODY, keys("raw:dev_secret"), now=1777032000, tolerance=300)
    assert (result.scheme, result.message_id) == ("openrouter", "abc123-completed")


def test_tv6_raw_key_signature_is_not_accepted_by_a_base64_secret() -> None:
    raw_mode = "v1,ELhqG0Ku1gwOc1f4jyKdp3SFGFLAOdJ9bvpWLciCakI="
    with pytest.raises(SignatureError):
        verify(std(TV1_ID, TV1_TS, raw_mode), TV1_BODY, keys(TV1_SECRET), now=TV1_TS, tolerance=300)
    # ...and is accepted when the same text is configured as a raw: secret (OpenAI SDK mode).
    assert verify(
        std(TV1_ID, TV1_TS, raw_mode),
        TV1_BODY,
        keys("raw:MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        now=TV1_TS,
        tolerance=300,
    )


def test_tv6_video_event() -> None:
    body = (
        b'{"id":"evt_abc123","object":"event","created_at":1758941485,"type":"video.completed",'
        b'"data":{"id":"video_abc123"}}'
    )
    headers = std(
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", 1758941490, "v1,/AkMEVuqO+t09q8n1dDiGt5oQ7EmRcFzUNR2/nTJ0do="
    )
    assert verify(headers, body, keys(TV1_SECRET), now=1758941490, tolerance=300)


# -- each scheme's failure modes --------------------------------------------------------------

NOW = 1_800_000_000
BODY = b'{"id":"video_1","status":"completed"}'
ED_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
ED_PUBLIC = "whpk_" + base64.b64encode(ED_KEY.public_key().public_bytes_raw()).decode()
OTHER_HMAC = "whsec_" + base64.b64encode(b"another-secret-of-24-byt").decode()


def v1a(body: bytes, msg_id: str = "m1", ts: int = NOW, key: Ed25519PrivateKey = ED_KEY) -> str:
    return "v1a," + base64.b64encode(key.sign(f"{msg_id}.{ts}.".encode() + body)).decode()


def v1(body: bytes, msg_id: str = "m1", ts: int = NOW, secret: str = TV1_SECRET) -> str:
    return sign_v1(parse_key(secret).material, msg_id, ts, body)


def openrouter(body: bytes, ts: int = NOW, secret: bytes = b"dev_secret") -> dict[str, str]:
    digest = hmac.new(secret, f"{ts},".encode() + body, hashlib.sha256).hexdigest()
    return {"x-openrouter-signature": f"t={ts},v1={digest}"}


SCHEMES = {
    "v1": (lambda body, ts=NOW: std("m1", ts, v1(body, ts=ts)), [TV1_SECRET], [OTHER_HMAC]),
    "v1a": (
        lambda body, ts=NOW: std("m1", ts, v1a(body, ts=ts)),
        [ED_PUBLIC],
        ["whpk_" + base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes_raw()).decode()],
    ),
    "openrouter": (lambda body, ts=NOW: openrouter(body, ts), ["raw:dev_secret"], ["raw:other"]),
}


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("case", ["valid", "tampered", "wrong_secret", "stale", "future", "rotated"])
def test_scheme_cases(scheme: str, case: str) -> None:
    make, good, wrong = SCHEMES[scheme]
    headers = make(BODY)
    body = BODY
    configured = keys(*good)
    now = NOW
    expect_ok = case in ("valid", "rotated")
    if case == "tampered":
        body = BODY.replace(b"completed", b"failed")
    elif case == "wrong_secret":
        configured = keys(*wrong)
    elif case == "stale":
        now = NOW + 301
    elif case == "future":
        now = NOW - 301
    elif case == "rotated":
        configured = keys(*wrong, *good)  # the old and the new key are both configured
    if expect_ok:
        assert verify(headers, body, configured, now=now, tolerance=300)
    else:
        with pytest.raises(SignatureError):
            verify(headers, body, configured, now=now, tolerance=300)


def test_rotation_with_two_signatures_in_one_header() -> None:
    header = f"{v1(BODY, secret=OTHER_HMAC)} {v1(BODY)}"
    assert verify(std("m1", NOW, header), BODY, keys(TV1_SECRET), now=NOW, tolerance=300)
    assert verify(std("m1", NOW, header), BODY, keys(OTHER_HMAC), now=NOW, tolerance=300)


def test_openrouter_rotation_with_two_v1_values() -> None:
    good = openrouter(BODY)["x-openrouter-signature"].split("v1=")[1]
    headers = {"x-openrouter-signature": f"t={NOW},v1={'0' * 64},v1={good}"}
    assert verify(headers, BODY, keys("raw:dev_secret"), now=NOW, tolerance=300)


def test_no_signature_headers_is_its_own_error() -> None:
    with pytest.raises(NoSignature):
        verify({"content-type": "application/json"}, BODY, keys(TV1_SECRET), now=NOW, tolerance=300)


@pytest.mark.parametrize(
    "headers",
    [
        {"webhook-id": "m1"},
        {"webhook-id": "m1", "webhook-timestamp": str(NOW), "webhook-signature": "v1a,!!!!"},
        {"webhook-id": "m1", "webhook-timestamp": str(NOW), "webhook-signature": "v1a,AAAA"},
        {"webhook-id": "m1", "webhook-timestamp": str(NOW), "webhook-signature": "v1,\u00e9\u00e9"},
        {"webhook-id": "m1", "webhook-timestamp": "9" * 40, "webhook-signature": "v1,x"},
        {"webhook-id": "m" * 1000, "webhook-timestamp": str(NOW), "webhook-signature": "v1,x"},
        {"webhook-id": "m1", "webhook-timestamp": str(NOW), "webhook-signature": "x" * 10000},
        {"x-openrouter-signature": "garbage"},
        {"x-openrouter-signature": "t=,v1=abc"},
        {"x-openrouter-signature": f"t={NOW}"},
        {"x-openrouter-signature": f"t={NOW},v1=zz"},
        {"x-openrouter-signature": "v1=" + "0" * 64},
        {"svix-signature": "v1,abc"},
    ],
)
def test_malformed_headers_are_signature_errors_never_crashes(headers: dict[str, str]) -> None:
    with pytest.raises(SignatureError):
        verify(headers, BODY, keys(TV1_SECRET, ED_PUBLIC, "raw:dev_secret"), now=NOW, tolerance=300)
