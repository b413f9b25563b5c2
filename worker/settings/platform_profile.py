"""ACPI platform profile, through sysfs (kernel ABI `sysfs-platform_profile`).

Writing one of `platform_profile_choices` into `platform_profile` switches the firmware's power
and fan policy at once (low-power / balanced / performance on most laptops and mini-PCs). It
needs write access to the file: root, or a udev rule that the box's owner adds.
"""

from __future__ import annotations

from jobs.inventory import SetterInfo
from worker.errors import SettingError
from worker.facts.acpi import CHOICES, PROFILE
from worker.settings.base import Setter, register_setter
from worker.sysfs import read_text


@register_setter("platform_profile", "sysfs")
class SysfsPlatformProfile(Setter):
    def read(self) -> str | None:
        text = read_text(self.root / PROFILE)
        return text.strip() if text else None

    def info(self) -> SetterInfo:
        choices = (read_text(self.root / CHOICES) or "").split()
        return SetterInfo(method=self.method, choices=choices)

    def apply(self, value: str) -> None:
        path = self.root / PROFILE
        try:
            path.write_text(value + "\n")
        except OSError as exc:
            raise SettingError(f"cannot write {value!r} to {path}: {exc.strerror}") from exc
