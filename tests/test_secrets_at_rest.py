"""Secrets at rest: sealed with RECEIVER_SECRET_KEY in the store (nothing in clear in the SQLite file
or its WAL), opened to sign and to log in, re-sealed by `receiver rotate-key`."""

from __future__ import annotations

import base64
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from standardwebhooks.webhooks import Webhook

from receiver.secrets_at_rest import SecretBox, seal_store
from receiver.settings import Settings, SettingsError
from receiver.simulator.provider import SimConfig
from tests.brokers import AMQP_PORT, Rabbit
from tests.conftest import SECRET, StackFactory, wait_until

pytestmark = pytest.mark.anyio

FAST = SimConfig(secret=SECRET, duration_median=0.2, duration_sigma=0.2, seed=11)
FANOUT = {"fanout_retry_schedule": (0.2, 0.2, 0.2), "fanout_timeout": 2}


def store_bytes(tmp_path: Path) -> bytes:
    """Everything SQLite keeps on disk for the store: the file, its WAL and shared memory."""
    return b"".join(p.read_bytes() for p in tmp_path.glob("receiver.db*") if p.is_file())


def cli(tmp_path: Path, *args: str, key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
    env["RECEIVER_DATABASE_URL"] = f"sqlite:///{tmp_path}/receiver.db"
    if key is not None:
        env["RECEIVER_SECRET_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def subscribe(stack: Any, url: str, secret: str) -> dict[str, Any]:
    answer = await stack.client.post(f"{stack.url}/v1/subscriptions", json={"url": url, "secret": secret})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def fresh_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


async def test_with_a_key_nothing_is_in_clear_and_sends_still_sign_and_log_in(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    key = Fernet.generate_key().decode()
    signing = fresh_secret()
    password = "pw-" + secrets.token_hex(8)
    rabbit = Rabbit()
    await rabbit.start()
    try:
        async with make_stack(FAST, secret_keys=(key,), **FANOUT) as stack:
            # guest:guest is sealed too: a delivery proves the dispatcher opens it to log in.
            sub = await subscribe(stack, rabbit.url(), signing)
            other = await subscribe(
                stack, f"amqp://guest:{password}@127.0.0.1:{AMQP_PORT}/?routing_key=x", fresh_secret()
            )
            assert other["url"].startswith("amqp://guest:***@")
            await stack.submit()
            await wait_until(lambda: _got(rabbit), timeout=20, what="the sealed subscription's publish")
            (message,) = await rabbit.messages()
            Webhook(signing).verify(message.body, message.headers)
            shown = (await stack.client.get(f"{stack.url}/v1/subscriptions/{sub['id']}")).json()
            assert shown["secret"] == signing and ":***@" in shown["url"]
            on_disk = store_bytes(tmp_path)
            assert signing.encode() not in on_disk
            assert signing.removeprefix("whsec_").encode() not in on_disk
            assert password.encode() not in on_disk
            assert b"fernet:" in on_disk
    finally:
        await rabbit.close()


async def _got(rabbit: Rabbit) -> bool:
    return bool(await rabbit.messages())


async def test_clear_rows_are_sealed_at_start_and_a_missing_key_stops_serve(
    make_stack: StackFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    signing = fresh_secret()
    password = "pw-" + secrets.token_hex(8)
    url = f"amqp://guest:{password}@127.0.0.1:{AMQP_PORT}/?routing_key=x"
    caplog.set_level(logging.WARNING)
    async with make_stack(FAST, **FANOUT) as stack:
        await subscribe(stack, url, signing)
    assert sum("RECEIVER_SECRET_KEY is unset" in r.getMessage() for r in caplog.records) == 1
    assert signing.encode() in store_bytes(tmp_path)  # no key: stored as given
    key = Fernet.generate_key().decode()
    async with make_stack(FAST, secret_keys=(key,), **FANOUT) as stack:
        listed = (await stack.client.get(f"{stack.url}/v1/subscriptions")).json()["data"]
        shown = (await stack.client.get(f"{stack.url}/v1/subscriptions/{listed[0]['id']}")).json()
        assert shown["secret"] == signing
    on_disk = store_bytes(tmp_path)
    assert signing.encode() not in on_disk and password.encode() not in on_disk
    stopped = cli(tmp_path, "serve", "--port", "1", key=None)
    assert stopped.returncode == 2
    assert stopped.stderr.count("\n") == 1 and "RECEIVER_SECRET_KEY" in stopped.stderr
    wrong = cli(tmp_path, "serve", "--port", "1", key=Fernet.generate_key().decode())
    assert wrong.returncode == 2 and "RECEIVER_SECRET_KEY" in wrong.stderr


async def test_rotate_key_reseals_under_the_first_key(make_stack: StackFactory, tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    signing = fresh_secret()
    async with make_stack(FAST, secret_keys=(old,), **FANOUT) as stack:
        sub = await subscribe(stack, f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}/?routing_key=x", signing)
    rotated = cli(tmp_path, "rotate-key", key=f"{new},{old}")
    assert rotated.returncode == 0, rotated.stderr
    assert "1 subscriptions" in rotated.stdout
    assert cli(tmp_path, "serve", "--port", "1", key=old).returncode == 2  # the old key opens nothing now
    async with make_stack(FAST, secret_keys=(new,), **FANOUT) as stack:
        shown = (await stack.client.get(f"{stack.url}/v1/subscriptions/{sub['id']}")).json()
        assert shown["secret"] == signing
    assert cli(tmp_path, "rotate-key", key=None).returncode == 2


@pytest.mark.parametrize("value", ["not-a-key", "x" * 44, f"{Fernet.generate_key().decode()},nope"])
def test_a_bad_key_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match="RECEIVER_SECRET_KEY"):
        Settings.from_env({"RECEIVER_SECRET_KEY": value})


async def test_sealing_and_rotating_on_each_backend(make_stack: StackFactory, database_url: str) -> None:
    signing = fresh_secret()
    url = f"amqp://guest:pw-{secrets.token_hex(4)}@127.0.0.1:{AMQP_PORT}/?routing_key=x"
    async with make_stack(FAST, database_url=database_url) as stack:
        sub = await subscribe(stack, url, signing)
        (stored,) = await stack.store.subscription_secrets(0, 10)
        assert stored[1:] == (url, signing)
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    for keys in ((old,), (new, old)):
        async with make_stack(FAST, database_url=database_url, secret_keys=keys) as stack:
            if len(keys) == 2:
                assert await seal_store(stack.store, SecretBox(keys), rotate=True) == 1
            (stored,) = await stack.store.subscription_secrets(0, 10)
            assert stored[2].startswith("fernet:") and ":fernet-" in stored[1]
            assert signing not in stored[2] and url != stored[1]
            shown = (await stack.client.get(f"{stack.url}/v1/subscriptions/{sub['id']}")).json()
            assert shown["secret"] == signing
    async with make_stack(FAST, database_url=database_url, secret_keys=(new,)) as stack:
        (stored,) = await stack.store.subscription_secrets(0, 10)
        assert SecretBox((new,)).open_secret(stored[2]) == signing
