"""Settings: defaults, and every bad value stops with one line naming its variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from receiver.settings import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port, settings.public_url) == ("127.0.0.1", 8000, "http://127.0.0.1:8000")
    assert settings.simulated and settings.signature_tolerance == 300 and not settings.allow_unsigned
    assert settings.fanout_retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)


def test_caps_on_the_work_of_one_request() -> None:
    defaults = Settings.from_env({})
    assert (defaults.replay_max_sends, defaults.max_subscriptions) == (10_000, 1000)
    given = Settings.from_env({"RECEIVER_REPLAY_MAX_SENDS": "50", "RECEIVER_MAX_SUBSCRIPTIONS": "3"})
    assert (given.replay_max_sends, given.max_subscriptions) == (50, 3)
    for name in ("RECEIVER_REPLAY_MAX_SENDS", "RECEIVER_MAX_SUBSCRIPTIONS"):
        for bad in ("0", "-1", "many"):
            with pytest.raises(SettingsError, match=name):
                Settings.from_env({name: bad})


def test_retention() -> None:
    defaults = Settings.from_env({})
    assert (
        defaults.retention,
        defaults.task_retention,
        defaults.media_retention,
        defaults.prune_interval,
    ) == (
        2_592_000,
        31_536_000,
        2_592_000,
        300,
    )
    given = Settings.from_env(
        {
            "RECEIVER_RETENTION": "3600",
            "RECEIVER_TASK_RETENTION": "0",
            "RECEIVER_MEDIA_RETENTION": "0",
            "RECEIVER_PRUNE_INTERVAL": "60",
        }
    )
    assert (given.retention, given.task_retention, given.media_retention, given.prune_interval) == (
        3600,
        0,
        0,
        60,
    )
    # Dedupe keys outlive bodies: task rows and keys never go before the bodies they dedupe.
    with pytest.raises(SettingsError, match="RECEIVER_TASK_RETENTION"):
        Settings.from_env({"RECEIVER_RETENTION": "7200", "RECEIVER_TASK_RETENTION": "3600"})


def test_secrets_never_show_in_repr() -> None:
    settings = Settings.from_env(
        {
            "RECEIVER_WEBHOOK_SECRETS": "raw:topsecretvalue",
            "RECEIVER_API_KEYS": "key-abcdef",
            "RECEIVER_PROVIDER_API_KEY": "pk-123456",
        }
    )
    text = repr(settings)
    assert "topsecretvalue" not in text and "key-abcdef" not in text and "pk-123456" not in text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RECEIVER_PORT", "eighty"),
        ("RECEIVER_PORT", "70000"),
        ("RECEIVER_DATABASE_URL", "mysql://x"),
        ("RECEIVER_PUBLIC_URL", "ftp://x"),
        ("RECEIVER_PROVIDER_URL", "not a url"),
        ("RECEIVER_WEBHOOK_SECRETS", "plaintext"),
        ("RECEIVER_WEBHOOK_SECRETS", "whsec_"),
        ("RECEIVER_SIGNATURE_TOLERANCE", "-5"),
        ("RECEIVER_ALLOW_UNSIGNED", "maybe"),
        ("RECEIVER_MAX_BODY_BYTES", "1kb"),
        ("RECEIVER_POLL_AFTER", "0"),
        ("RECEIVER_POLL_MAX_INTERVAL", "x"),
        ("RECEIVER_TASK_MAX_AGE", "1"),
        ("RECEIVER_FANOUT_RETRY_SCHEDULE", "5,x"),
        ("RECEIVER_FANOUT_TIMEOUT", "0"),
        ("RECEIVER_CALLBACK_SECRET", "raw:abc"),
        ("RECEIVER_OUTBOUND_ALLOW", "10.0.0.0/33"),
        ("RECEIVER_RETENTION", "0"),
        ("RECEIVER_RETENTION", "30d"),
        ("RECEIVER_TASK_RETENTION", "-1"),
        ("RECEIVER_MEDIA_RETENTION", "x"),
        ("RECEIVER_PRUNE_INTERVAL", "0"),
    ],
)
def test_bad_values_name_their_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_remote_provider_needs_https_public_url() -> None:
    with pytest.raises(SettingsError, match="RECEIVER_PUBLIC_URL"):
        Settings.from_env({"RECEIVER_PROVIDER_URL": "https://api.example.com"})
    ok = Settings.from_env(
        {
            "RECEIVER_PROVIDER_URL": "https://api.example.com",
            "RECEIVER_PUBLIC_URL": "https://hooks.example.com",
        }
    )
    assert ok.provider_url == "https://api.example.com"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RECEIVER_PORT", "eighty"),
        ("RECEIVER_ALLOW_UNSIGNED", "perhaps"),
        ("RECEIVER_WEBHOOK_SECRETS", "whsec_!!"),
    ],
)
def test_serve_stops_at_once_with_one_line(name: str, value: str, tmp_path: object) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    env[name] = value
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], done.stderr
    if name == "RECEIVER_WEBHOOK_SECRETS":
        assert "!!" not in lines[0]
