"""Verify inbound webhook signatures on raw bytes, and sign outbound ones (pure, no I/O)."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from receiver.errors import NoSignature, SecretFormatError, SignatureError

__all__ = [
    "STANDARD_HEADER_FAMILIES",
    "Key",
    "NoSignature",
    "SecretFormatError",
    "SignatureError",
    "Verification",
    "fingerprint",
    "parse_key",
    "sign_v1",
    "verify",
]

# Standard Webhooks headers under their three names: unbranded, Svix, and Pollo-style X-.
STANDARD_HEADER_FAMILIES = ("webhook-", "svix-", "x-webhook-")
OPENROUTER_SIGNATURE = "x-openrouter-signature"
_FAMILY_NAMES = tuple((p, p + "id", p + "timestamp", p + "signature") for p in STANDARD_HEADER_FAMILIES)

_TIMESTAMP = re.compile(r"^\s*\+?\d{1,15}\s*$")
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_MAX_ID = 256
_MAX_SIGNATURE_HEADER = 8192


@dataclass(frozen=True)
class Key:
    """One configured verification key. `material` never appears in repr."""

    scheme: str  # "whsec" (HMAC), "whpk" (Ed25519 public key) or "raw" (HMAC, UTF-8 bytes)
    material: bytes = field(repr=False)

    def public_key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.material)


@dataclass(slots=True)
class Verification:
    scheme: str  # standard-v1, standard-v1a, openrouter, unsigned
    message_id: str | None
    timestamp: int | None
    key_id: str | None = None  # fingerprint() of the key that matched; None when unsigned


@functools.lru_cache(maxsize=64)  # the configured keys: the same few on every delivery
def fingerprint(key: Key) -> str:
    """A stable name for a configured key that says nothing of it: which secret verified a
    delivery scopes its deduplication on POST /webhooks. (The signatures it checks are stored
    with each delivery, so a hash of the key exposes nothing those do not.)"""
    digest = hashlib.sha256(b"receiver key fingerprint\x00" + key.scheme.encode() + b"\x00" + key.material)
    return digest.hexdigest()[:16]


def _b64decode(text: str) -> bytes:
    text = text.strip()
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def parse_key(text: str) -> Key:
    """Parse one secret from settings: whsec_<base64>, whpk_<base64> or raw:<text>."""
    if text.startswith("whsec_"):
        try:
            material = _b64decode(text[len("whsec_") :])
        except (binascii.Error, ValueError):
            raise SecretFormatError("a whsec_ secret is not valid base64") from None
        if not material:
            raise SecretFormatError("a whsec_ secret is empty")
        return Key("whsec", material)
    if text.startswith("whpk_"):
        try:
            material = _b64decode(text[len("whpk_") :])
        except (binascii.Error, ValueError):
            raise SecretFormatError("a whpk_ key is not valid base64") from None
        if len(material) != 32:
            raise SecretFormatError("a whpk_ key must decode to 32 bytes (raw Ed25519 public key)")
        return Key("whpk", material)
    if text.startswith("raw:"):
        try:
            material = text[len("raw:") :].encode("utf-8")
        except UnicodeEncodeError:  # os.environ keeps undecodable bytes as lone surrogates
            raise SecretFormatError("a raw: secret is not valid UTF-8") from None
        if not material:
            raise SecretFormatError("a raw: secret is empty")
        return Key("raw", material)
    raise SecretFormatError("each secret must start with whsec_, whpk_ or raw:")


def sign_v1(secret: bytes, message_id: str, timestamp: str | int, body: bytes) -> str:
    """Standard Webhooks v1 signature entry for one secret: 'v1,<base64 HMAC-SHA256>'."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(secret, signed, "sha256")).decode("ascii")


def _timestamp(raw: str, now: int, tolerance: int) -> int:
    if not _TIMESTAMP.match(raw):
        raise SignatureError("timestamp header is not a whole number of seconds")
    value = int(raw.strip())
    if value < now - tolerance:
        raise SignatureError("timestamp is too old")
    if value > now + tolerance:
        raise SignatureError("timestamp is too new")
    return value


@functools.lru_cache(maxsize=16)  # the configured keys: the same tuple on every delivery
def _split(
    keys: tuple[Key, ...],
) -> tuple[tuple[tuple[bytes, str], ...], tuple[tuple[Ed25519PublicKey, str], ...]]:
    """HMAC secrets and Ed25519 public keys, each decoded once, with their fingerprints."""
    return (
        tuple((k.material, fingerprint(k)) for k in keys if k.scheme in ("whsec", "raw")),
        tuple((k.public_key(), fingerprint(k)) for k in keys if k.scheme == "whpk"),
    )


def _verify_standard(
    prefix: str, headers: Mapping[str, str], body: bytes, keys: Sequence[Key], now: int, tolerance: int
) -> Verification:
    message_id = headers.get(prefix + "id")
    raw_ts = headers.get(prefix + "timestamp")
    header = headers.get(prefix + "signature")
    if not message_id or raw_ts is None or not header:
        raise SignatureError(f"missing {prefix}id, {prefix}timestamp or {prefix}signature")
    if len(message_id) > _MAX_ID or len(header) > _MAX_SIGNATURE_HEADER:
        raise SignatureError("signature headers are too long")
    timestamp = _timestamp(raw_ts, now, tolerance)
    # The original header text is signed, as the OpenAI SDK does ("0<ts>" stays "0<ts>").
    signed = f"{message_id}.{raw_ts}.".encode() + body
    hmac_keys, public_keys = _split(tuple(keys))
    expected = [(base64.b64encode(hmac.digest(k, signed, "sha256")), fp) for k, fp in hmac_keys]
    for entry in header.split():
        version, sep, value = entry.partition(",")
        if not sep:  # bare base64 is a v1 signature (as the OpenAI SDK accepts)
            version, value = "v1", entry
        if version == "v1":
            given = value.encode("ascii", "replace")
            for want, key_id in expected:
                if hmac.compare_digest(given, want):
                    return Verification("standard-v1", message_id, timestamp, key_id)
        elif version == "v1a" and public_keys:
            try:
                signature = _b64decode(value)
            except (binascii.Error, ValueError):
                continue
            if len(signature) != 64:
                continue
            for public_key, key_id in public_keys:
                try:
                    public_key.verify(signature, signed)
                except InvalidSignature:
                    continue
                return Verification("standard-v1a", message_id, timestamp, key_id)
    raise SignatureError("no signature matched a configured key")


def _verify_openrouter(
    headers: Mapping[str, str], body: bytes, keys: Sequence[Key], now: int, tolerance: int
) -> Verification:
    header = headers[OPENROUTER_SIGNATURE]
    if len(header) > _MAX_SIGNATURE_HEADER:
        raise SignatureError("signature header is too long")
    raw_ts: str | None = None
    given: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError("malformed X-OpenRouter-Signature")
        if name == "t":
            raw_ts = value
        elif name == "v1":
            given.append(value)
    if raw_ts is None or not given:
        raise SignatureError("X-OpenRouter-Signature needs t= and v1=")
    timestamp = _timestamp(raw_ts, now, tolerance)
    signed = f"{raw_ts},".encode() + body
    expected = [
        (hmac.new(k.material, signed, hashlib.sha256).hexdigest().encode(), fingerprint(k))
        for k in keys
        if k.scheme == "raw"
    ]
    for value in given:
        if not _HEX.match(value):
            continue
        candidate = value.lower().encode()
        for want, key_id in expected:
            if hmac.compare_digest(candidate, want):
                return Verification(
                    "openrouter", headers.get("x-openrouter-idempotency-key"), timestamp, key_id
                )
    raise SignatureError("no signature matched a configured key")


def verify(
    headers: Mapping[str, str], body: bytes, keys: Sequence[Key], *, now: int, tolerance: int
) -> Verification:
    """Authenticate a delivery from its lowercase headers and raw body.

    Every parsing failure becomes SignatureError; NoSignature when no scheme's headers are
    present at all (the caller decides whether unsigned deliveries are acceptable there).
    """
    for prefix, id_name, timestamp_name, signature_name in _FAMILY_NAMES:
        if id_name in headers or timestamp_name in headers or signature_name in headers:
            return _verify_standard(prefix, headers, body, keys, now, tolerance)
    if OPENROUTER_SIGNATURE in headers:
        return _verify_openrouter(headers, body, keys, now, tolerance)
    raise NoSignature("no signature headers")
