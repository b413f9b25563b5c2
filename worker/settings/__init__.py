"""Runtime setters (platform profile, power limit) and the context manager that applies them."""

from worker.errors import SettingError
from worker.settings import platform_profile, power_limit  # noqa: F401  (registers the setters)
from worker.settings.apply import RuntimeSettings, journal_in, recover_settings
from worker.settings.base import Setter, build_setters, registered_setters

__all__ = [
    "RuntimeSettings", "Setter", "SettingError", "build_setters", "journal_in",
    "recover_settings", "registered_setters",
]  # fmt: skip
