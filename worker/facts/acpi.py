"""The ACPI platform profile (low-power / balanced / performance ...).

Kernel ABI `sysfs-platform_profile`: `platform_profile` holds the current profile, and
`platform_profile_choices` a space-separated list. It changes the APU's power limits at
runtime without a reboot, so two runs of one box in one carve-out can still differ by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from worker.facts._common import FactLog, first_line, shown
from worker.sysfs import read_text

PROFILE = "sys/firmware/acpi/platform_profile"
CHOICES = "sys/firmware/acpi/platform_profile_choices"


@dataclass(frozen=True)
class PlatformProfile:
    current: str | None = None
    choices: list[str] = field(default_factory=list)


def read_platform_profile(root: Path, log: FactLog) -> PlatformProfile:
    current = first_line(read_text(root / PROFILE))
    choices = (read_text(root / CHOICES) or "").split()
    if current is None:
        log.note(
            f"platform_profile: {shown(root, root / PROFILE)} is missing or unreadable "
            "(no ACPI platform-profile driver on this box)"
        )
    else:
        log.source("platform_profile", f"{shown(root, root / PROFILE)} = {current}")
    return PlatformProfile(current=current, choices=choices)
