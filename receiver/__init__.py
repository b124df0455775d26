"""Webhook receiver for asynchronous video-generation APIs."""

from receiver.app import create_app
from receiver.settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError", "create_app"]
__version__ = "0.1.0"
