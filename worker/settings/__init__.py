"""Runtime setters (platform profile, power limit) and the context manager that applies them."""

from worker.settings import platform_profile, power_limit  # noqa: F401  (registers the setters)
from worker.settings.apply import RuntimeSettings
from worker.settings.base import Setter, SettingError, build_setters

__all__ = ["RuntimeSettings", "Setter", "SettingError", "build_setters"]
