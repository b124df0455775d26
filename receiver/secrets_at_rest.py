"""Secrets at rest: subscription signing secrets and broker passwords sealed with Fernet keys.

The store only ever sees the sealed forms when RECEIVER_SECRET_KEY is set: a secret becomes
`fernet:<token>`, a broker URL's password `fernet-<token>` (Fernet tokens are URL-safe, so the URL
stays a URL, and a read that redacts the password shows `***` either way).
"""

from __future__ import annotations

import logging
from urllib.parse import quote, unquote, urlsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from store import Store

__all__ = ["SecretBox", "SecretKeyError", "seal_store"]

log = logging.getLogger("receiver.secrets")

_SECRET = "fernet:"
_PASSWORD = "fernet-"
_BATCH = 500


class SecretKeyError(Exception):
    """A sealed secret that no key of RECEIVER_SECRET_KEY opens."""


class SecretBox:
    """Seals with the first key, opens with any; with no key, seals nothing (stored as given)."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys]) if keys else None

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    @staticmethod
    def sealed(stored: str) -> bool:
        if stored.startswith(_SECRET):
            return True
        password = _password(stored)
        return password is not None and password.startswith(_PASSWORD)

    def _seal(self, text: str) -> str:
        assert self._fernet is not None
        return self._fernet.encrypt(text.encode()).decode()

    def _open(self, token: str) -> str:
        if self._fernet is None:
            raise SecretKeyError("a secret is sealed and RECEIVER_SECRET_KEY is unset")
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyError("no key of RECEIVER_SECRET_KEY opens a sealed secret") from None

    def seal_secret(self, secret: str) -> str:
        if self._fernet is None or not secret or secret.startswith(_SECRET):
            return secret
        return _SECRET + self._seal(secret)

    def open_secret(self, stored: str) -> str:
        return self._open(stored[len(_SECRET) :]) if stored.startswith(_SECRET) else stored

    def seal_url(self, url: str) -> str:
        password = _password(url)
        if self._fernet is None or not password or password.startswith(_PASSWORD):
            return url
        return _with_password(url, _PASSWORD + self._seal(unquote(password)))

    def open_url(self, stored: str) -> str:
        password = _password(stored)
        if not password or not password.startswith(_PASSWORD):
            return stored
        return _with_password(stored, quote(self._open(password[len(_PASSWORD) :]), safe=""))

    def rotate(self, stored_url: str, stored_secret: str) -> tuple[str, str]:
        """The pair sealed under the first key, whatever key (or none) sealed it before."""
        return (
            self.seal_url(self.open_url(stored_url)),
            self.seal_secret(self.open_secret(stored_secret)),
        )


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:{password}@{host}").geturl()


async def seal_store(store: Store, box: SecretBox, *, rotate: bool = False) -> int:
    """Check every stored secret opens (SecretKeyError otherwise), and with a key, seal the clear
    ones (or, with `rotate`, re-seal every one under the first key). Returns how many changed."""
    changed = 0
    after = 0
    while True:
        rows = await store.subscription_secrets(after, _BATCH)
        if not rows:
            return changed
        after = rows[-1][0]
        changes = []
        for pk, url, secret in rows:
            box.open_url(url), box.open_secret(secret)  # SecretKeyError when no key opens them
            if not box.enabled:
                continue
            if rotate:
                url2, secret2 = box.rotate(url, secret)
            else:
                url2, secret2 = box.seal_url(url), box.seal_secret(secret)
            if (url2, secret2) != (url, secret):
                changes.append((pk, url2, secret2))
        if changes:
            await store.set_subscription_secrets(changes)
            changed += len(changes)
