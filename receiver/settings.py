"""Parse and validate every RECEIVER_* setting once, at start."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from cryptography.fernet import Fernet

from receiver.errors import SettingsError
from receiver.media.base import KEY_SEGMENT, S3Location
from receiver.outbound.addresses import Network
from receiver.routes.guard import origin_of
from receiver.rules.signatures import Key, SecretFormatError, parse_key

__all__ = ["Network", "Settings", "SettingsError"]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

_FOREVER = 100 * 365 * 86_400  # retention ceilings: a century, far past any need

_WHOLE = re.compile(r"[+-]?[0-9]{1,18}", re.ASCII)
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)


def _int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    if not _WHOLE.fullmatch(raw.strip()):
        raise SettingsError(f"{name}: expected a whole number, got {raw!r}")
    value = int(raw.strip())
    if not low <= value <= high:
        raise SettingsError(f"{name}: must be between {low} and {high}, got {value}")
    return value


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", re.ASCII)
_REGION = re.compile(r"[a-z0-9-]{1,40}", re.ASCII)


def _media(env: Mapping[str, str]) -> tuple[str | None, S3Location | None]:
    """RECEIVER_MEDIA_URL (or its alias RECEIVER_MEDIA_DIR): a directory, or a bucket reached
    with the standard AWS_* variables."""
    url = env.get("RECEIVER_MEDIA_URL", "").strip()
    alias = env.get("RECEIVER_MEDIA_DIR", "").strip()
    if url and alias and url != alias:
        raise SettingsError("RECEIVER_MEDIA_URL: set it or its alias RECEIVER_MEDIA_DIR, not both")
    if not url:
        return alias or None, None
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/") or parts.query:
            raise SettingsError(f"RECEIVER_MEDIA_URL: expected file:///absolute/path, got {url!r}")
        return unquote(parts.path), None
    if scheme != "s3":
        if "://" in url:
            raise SettingsError(
                f"RECEIVER_MEDIA_URL: expected a directory, file:///path or s3://bucket/prefix, got {url!r}"
            )
        return url, None
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise SettingsError(f"RECEIVER_MEDIA_URL: {bucket!r} is not an S3 bucket name (s3://bucket/prefix)")
    if parts.query or parts.fragment:
        raise SettingsError("RECEIVER_MEDIA_URL: must not carry a query or fragment")
    prefix = parts.path.strip("/")
    if prefix and not all(KEY_SEGMENT.fullmatch(p) and p not in (".", "..") for p in prefix.split("/")):
        raise SettingsError(
            f"RECEIVER_MEDIA_URL: the prefix {prefix!r} must be plain names (letters, digits, . _ = -) "
            "separated by /"
        )
    endpoint = None
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        raw = env.get(name, "").strip()
        if raw:
            endpoint = _url(name, raw)
            break
    region = ""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        region = env.get(name, "").strip()
        if region:
            if not _REGION.fullmatch(region):
                raise SettingsError(f"{name}: {region!r} is not a region name")
            break
    key_id = env.get("AWS_ACCESS_KEY_ID", "").strip() or None
    secret = env.get("AWS_SECRET_ACCESS_KEY", "").strip() or None
    if (key_id is None) != (secret is None):
        missing = "AWS_SECRET_ACCESS_KEY" if secret is None else "AWS_ACCESS_KEY_ID"
        raise SettingsError(f"{missing}: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")
    return None, S3Location(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint,
        region=region or "us-east-1",
        access_key_id=key_id,
        secret_access_key=secret,
        session_token=env.get("AWS_SESSION_TOKEN", "").strip() or None,
    )


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


def _url(name: str, raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}: expected an http(s) URL, got {raw!r}")
    if parts.query or parts.fragment:
        raise SettingsError(f"{name}: must not carry a query or fragment")
    return raw.strip().rstrip("/")


def _is_host(name: str) -> bool:
    """An IP address or a host name made of valid labels."""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        labels = name.split(".")
        return not labels[-1].isdigit() and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _host(env: Mapping[str, str]) -> str:
    """RECEIVER_HOST: an IPv4 or IPv6 address, or a host name (never a mistyped address)."""
    raw = env.get("RECEIVER_HOST", "127.0.0.1").strip() or "127.0.0.1"
    bare = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    labels = bare.rstrip(".").split(".")
    if ":" in bare or labels[-1].isdigit() or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise SettingsError(f"RECEIVER_HOST: {raw!r} is not an IP address or a host name")
    return bare


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", "localhost.") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = "sqlite:///receiver.db"
    public_url: str = "http://127.0.0.1:8000"
    provider_url: str | None = None
    provider_api_key: str | None = field(default=None, repr=False)
    webhook_keys: tuple[Key, ...] = field(default=(), repr=False)
    signature_tolerance: int = 300
    allow_unsigned: bool = False
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Fernet keys sealing secrets at rest: the first seals, every one opens (rotation).
    secret_keys: tuple[str, ...] = field(default=(), repr=False)
    max_body_bytes: int = 1_048_576
    poll_after: int = 60
    poll_max_interval: int = 600
    poll_concurrency: int = 16
    poll_rate: float = 50.0
    # Library-only (no variable): poll every N seconds instead of learning; benchmarks compare.
    poll_fixed_interval: float | None = None
    task_max_age: int = 86_400
    fanout_retry_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    fanout_timeout: int = 15
    provider_timeout: int = 30
    submit_confirm_window: int = 3600  # seconds an unconfirmed submit waits for its delivery
    fanout_concurrency: int = 64
    fanout_per_subscriber: int = 4  # where a subscriber's adaptive window starts (receiver.rules.congestion)
    callback_secret: str | None = field(default=None, repr=False)
    # Work one request may cause: sends a replay may queue, subscriptions a client may hold.
    replay_max_sends: int = 10_000
    max_subscriptions: int = 1000
    outbound_allow: tuple[Network, ...] = ()
    # Connection limits (see receiver/server.py).
    max_header_bytes: int = 32_768
    header_timeout: float = 5.0
    keepalive_timeout: float = 5.0
    max_connections: int = 1000
    body_timeout: float = 30.0
    # Event streams open at once (receiver.routes.events); never more than half of max_connections.
    max_streams: int = 100
    # Cross-site rules (see receiver/routes/guard.py).
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()

    media_dir: str | None = None  # None: `media` beside a SQLite store (see media_path)
    media_s3: S3Location | None = None  # set: files live in this bucket, not in a directory
    media_max_bytes: int = 2_147_483_648
    media_timeout: int = 900  # seconds one download may take in all
    # Library-only (no variable): seconds without a byte before a download is abandoned and retried.
    media_stall: float = 30.0
    # Retention (receiver.workers.pruner): seconds after a task ends that its bodies, events and sends
    # go, and its row and dedupe keys (0 keeps them); seconds a kept file is kept (0: forever).
    retention: int = 2_592_000
    task_retention: int = 31_536_000
    media_retention: int = 2_592_000
    prune_interval: int = 300

    @property
    def simulated(self) -> bool:
        """No provider configured: serve runs the built-in simulator."""
        return self.provider_url is None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        host = _host(env)
        port = _int(env, "RECEIVER_PORT", 8000, low=0, high=65535)

        database_url = env.get("RECEIVER_DATABASE_URL", "sqlite:///receiver.db").strip()
        if not database_url.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise SettingsError(
                f"RECEIVER_DATABASE_URL: unsupported store {database_url.split(':', 1)[0]!r}; "
                "use sqlite:///path.db or postgresql://user@host:port/db"
            )

        url_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        if ":" in url_host and not url_host.startswith("["):
            url_host = f"[{url_host}]"
        public_url = _url(
            "RECEIVER_PUBLIC_URL", env.get("RECEIVER_PUBLIC_URL") or f"http://{url_host}:{port}"
        )
        provider_raw = env.get("RECEIVER_PROVIDER_URL", "").strip()
        provider_url = _url("RECEIVER_PROVIDER_URL", provider_raw) if provider_raw else None
        if provider_url is not None:
            provider_host = urlsplit(provider_url).hostname or ""
            if not is_loopback_host(provider_host) and not public_url.startswith("https://"):
                raise SettingsError(
                    "RECEIVER_PUBLIC_URL: must be https when RECEIVER_PROVIDER_URL is not on "
                    "loopback (providers refuse http callbacks)"
                )

        keys: list[Key] = []
        for token in re.split(r"[\s,]+", env.get("RECEIVER_WEBHOOK_SECRETS", "").strip()):
            if not token:
                continue
            try:
                keys.append(parse_key(token))
            except SecretFormatError as exc:
                raise SettingsError(f"RECEIVER_WEBHOOK_SECRETS: {exc}") from None

        api_keys = tuple(k for k in re.split(r"[\s,]+", env.get("RECEIVER_API_KEYS", "")) if k)
        secret_keys = tuple(k for k in re.split(r"[\s,]+", env.get("RECEIVER_SECRET_KEY", "")) if k)
        for number, key in enumerate(secret_keys, 1):
            try:
                Fernet(key.encode())
            except (ValueError, TypeError):
                raise SettingsError(
                    f"RECEIVER_SECRET_KEY: key {number} is not a Fernet key (32 url-safe base64 bytes;"
                    " make one with python -c 'from cryptography.fernet import Fernet;"
                    " print(Fernet.generate_key().decode())')"
                ) from None

        schedule_raw = env.get("RECEIVER_FANOUT_RETRY_SCHEDULE")
        schedule: tuple[float, ...] = cls.fanout_retry_schedule
        if schedule_raw is not None and schedule_raw.strip():
            try:
                schedule = tuple(float(p) for p in schedule_raw.split(",") if p.strip())
            except ValueError:
                raise SettingsError(
                    "RECEIVER_FANOUT_RETRY_SCHEDULE: expected comma-separated seconds"
                ) from None
            if not schedule or any(not 0 <= s <= 7 * 86400 for s in schedule):
                raise SettingsError("RECEIVER_FANOUT_RETRY_SCHEDULE: each delay must be 0 to 604800 seconds")

        callback_secret = env.get("RECEIVER_CALLBACK_SECRET", "").strip() or None
        if callback_secret is not None:
            try:
                key = parse_key(callback_secret)
            except SecretFormatError as exc:
                raise SettingsError(f"RECEIVER_CALLBACK_SECRET: {exc}") from None
            if key.scheme != "whsec":
                raise SettingsError("RECEIVER_CALLBACK_SECRET: must be a whsec_ secret")

        networks: list[Network] = []
        for token in env.get("RECEIVER_OUTBOUND_ALLOW", "").split(","):
            if token.strip():
                try:
                    networks.append(ipaddress.ip_network(token.strip(), strict=False))
                except ValueError:
                    raise SettingsError(f"RECEIVER_OUTBOUND_ALLOW: {token.strip()!r} is not a CIDR") from None

        cors_origins: list[str] = []
        for token in env.get("RECEIVER_CORS_ORIGINS", "").split(","):
            if not token.strip():
                continue
            origin = origin_of(token)
            if origin is None or urlsplit(token.strip()).path not in ("", "/"):
                raise SettingsError(
                    f"RECEIVER_CORS_ORIGINS: {token.strip()!r} is not an origin (scheme://host[:port])"
                )
            cors_origins.append(origin)
        allowed_hosts: list[str] = []
        for token in env.get("RECEIVER_ALLOWED_HOSTS", "").split(","):
            name = token.strip().lower().rstrip(".")
            if not name:
                continue
            bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
            if bare != "*" and not _is_host(bare):
                raise SettingsError(
                    f"RECEIVER_ALLOWED_HOSTS: {token.strip()!r} is not a host name or address (no port)"
                )
            allowed_hosts.append(bare)

        poll_after = _int(env, "RECEIVER_POLL_AFTER", 60, low=1, high=86_400)
        poll_max = _int(env, "RECEIVER_POLL_MAX_INTERVAL", 600, low=1, high=86_400)
        if poll_max < 1:
            raise SettingsError("RECEIVER_POLL_MAX_INTERVAL: must be at least 1")
        retention = _int(env, "RECEIVER_RETENTION", 2_592_000, low=60, high=_FOREVER)
        task_retention = _int(env, "RECEIVER_TASK_RETENTION", 31_536_000, low=0, high=_FOREVER)
        if 0 < task_retention < retention:
            # Dedupe keys outlive bodies: a copy of a pruned delivery must still be a duplicate.
            raise SettingsError(
                f"RECEIVER_TASK_RETENTION: must be 0 or at least RECEIVER_RETENTION ({retention}), "
                f"got {task_retention}"
            )

        media_dir, media_s3 = _media(env)

        return cls(
            host=host,
            port=port,
            database_url=database_url,
            public_url=public_url,
            provider_url=provider_url,
            provider_api_key=env.get("RECEIVER_PROVIDER_API_KEY", "").strip() or None,
            webhook_keys=tuple(keys),
            signature_tolerance=_int(env, "RECEIVER_SIGNATURE_TOLERANCE", 300, low=0, high=86_400),
            allow_unsigned=_bool(env, "RECEIVER_ALLOW_UNSIGNED", False),
            api_keys=api_keys,
            secret_keys=secret_keys,
            max_body_bytes=_int(env, "RECEIVER_MAX_BODY_BYTES", 1_048_576, low=1024, high=1 << 28),
            poll_after=poll_after,
            poll_max_interval=poll_max,
            poll_concurrency=_int(env, "RECEIVER_POLL_CONCURRENCY", 16, low=1, high=1024),
            poll_rate=float(_int(env, "RECEIVER_POLL_RATE", 50, low=1, high=100_000)),
            task_max_age=_int(env, "RECEIVER_TASK_MAX_AGE", 86_400, low=60, high=90 * 86_400),
            fanout_retry_schedule=schedule,
            fanout_timeout=_int(env, "RECEIVER_FANOUT_TIMEOUT", 15, low=1, high=300),
            provider_timeout=_int(env, "RECEIVER_PROVIDER_TIMEOUT", 30, low=1, high=300),
            submit_confirm_window=_int(env, "RECEIVER_SUBMIT_CONFIRM_WINDOW", 3600, low=60, high=30 * 86_400),
            fanout_concurrency=_int(env, "RECEIVER_FANOUT_CONCURRENCY", 64, low=1, high=4096),
            fanout_per_subscriber=_int(env, "RECEIVER_FANOUT_PER_SUBSCRIBER", 4, low=1, high=1024),
            callback_secret=callback_secret,
            replay_max_sends=_int(env, "RECEIVER_REPLAY_MAX_SENDS", 10_000, low=1, high=10_000_000),
            max_subscriptions=_int(env, "RECEIVER_MAX_SUBSCRIPTIONS", 1000, low=1, high=1_000_000),
            outbound_allow=tuple(networks),
            max_header_bytes=_int(env, "RECEIVER_MAX_HEADER_BYTES", 32_768, low=1024, high=1 << 20),
            header_timeout=float(_int(env, "RECEIVER_HEADER_TIMEOUT", 5, low=1, high=300)),
            keepalive_timeout=float(_int(env, "RECEIVER_KEEPALIVE_TIMEOUT", 5, low=1, high=3600)),
            max_connections=_int(env, "RECEIVER_MAX_CONNECTIONS", 1000, low=16, high=1_000_000),
            body_timeout=float(_int(env, "RECEIVER_BODY_TIMEOUT", 30, low=1, high=3600)),
            max_streams=_int(env, "RECEIVER_MAX_STREAMS", 100, low=1, high=1_000_000),
            cors_origins=tuple(cors_origins),
            allowed_hosts=tuple(allowed_hosts),
            media_dir=media_dir,
            media_s3=media_s3,
            media_max_bytes=_int(env, "RECEIVER_MEDIA_MAX_BYTES", 2_147_483_648, low=1, high=1 << 50),
            media_timeout=_int(env, "RECEIVER_MEDIA_TIMEOUT", 900, low=1, high=86_400),
            retention=retention,
            task_retention=task_retention,
            media_retention=_int(env, "RECEIVER_MEDIA_RETENTION", 2_592_000, low=0, high=_FOREVER),
            prune_interval=_int(env, "RECEIVER_PRUNE_INTERVAL", 300, low=1, high=86_400),
        )

    def media_path(self) -> str:
        """The media directory (RECEIVER_MEDIA_URL or RECEIVER_MEDIA_DIR), else `media` beside a
        SQLite store (the working directory otherwise)."""
        if self.media_dir is not None:
            return self.media_dir
        if self.database_url.startswith("sqlite:///"):
            folder = os.path.dirname(self.database_url[len("sqlite:///") :])
            return os.path.join(folder, "media") if folder else "media"
        return "media"
