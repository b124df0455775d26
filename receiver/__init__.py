"""Webhook receiver for asynchronous video-generation APIs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Settings", "SettingsError", "__version__", "create_app"]
__version__ = "0.3.0.dev0"

if TYPE_CHECKING:
    from receiver.app import create_app
    from receiver.errors import SettingsError
    from receiver.settings import Settings


def __getattr__(name: str) -> Any:
    # Loaded on first use: `import receiver.errors` (which the store imports) must not pull in the
    # whole app, and the app imports the store.
    if name == "create_app":
        from receiver.app import create_app

        return create_app
    if name == "Settings":
        from receiver.settings import Settings

        return Settings
    if name == "SettingsError":
        from receiver.errors import SettingsError

        return SettingsError
    raise AttributeError(f"module 'receiver' has no attribute {name!r}")
