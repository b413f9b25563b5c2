"""The `reconfigure:` section of worker.yaml: how this box may switch its own configuration.

Example::

    reconfigure:
      vram_split:
        firmware_attribute: "UMA Frame Buffer Size"   # the folder under attributes/
        driver: hp-bioscfg                            # optional: the one driver that has it
        values: {512M: "512MB", 32G: "32GB"}          # configuration value -> firmware value
      ttm_pages_limit:
        command: ["/usr/sbin/grubby", "--update-kernel=ALL", "--args=ttm.pages_limit={value}"]
      bios_password_file: /etc/orch/bios-password     # mode 600; only if the BIOS has one
      reboot_command: ["systemctl", "reboot"]
      max_reboots_per_campaign: 4
      allowed_hours: "22:00-06:00"                    # local time, may wrap midnight
      restore: false                                  # switch back to the original at the end

Nothing here comes from a job: the owner names the attribute, the values it may take and the
commands, and a queued message can only pick one of the configurations listed.

This module imports nothing from worker.config (which imports it).
"""

from __future__ import annotations

import re
from datetime import time
from pathlib import Path
from string import Formatter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.spec import CONFIGURATION_AXES, normalize_pages_limit, normalize_vram_split

# How each axis's values are spelled in a configuration (what a queue name carries).
NORMALIZE = {"vram_split": normalize_vram_split, "ttm_pages_limit": normalize_pages_limit}

_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
# One path component: the attribute and driver names become folders under /sys.
_COMPONENT = re.compile(r"(?!\.\.?\Z)[^/\x00\n]+")


class AxisConfig(BaseModel):
    """How one configuration axis is switched: a firmware attribute, or a command.

    A firmware attribute is written through /sys/class/firmware-attributes (the BIOS applies it
    at the next boot); a command (argv, never a shell) gets the configuration value where its
    arguments say `{value}`, e.g. to put `ttm.pages_limit=...` on the kernel command line.
    """

    model_config = ConfigDict(extra="forbid")

    firmware_attribute: str | None = None
    driver: str | None = None
    # configuration value ("32G") -> what the attribute takes ("32GB"); keys normalised by the
    # section below, which knows the axis.
    values: dict[str, str] = Field(default_factory=dict)
    command: list[str] = Field(default_factory=list)
    # A boot-loader tool rewrites a few files; minutes would mean it hangs.
    timeout_s: float = Field(default=120.0, gt=0, le=600)

    @field_validator("firmware_attribute", "driver")
    @classmethod
    def _one_folder(cls, value: str | None) -> str | None:
        if value is not None and not _COMPONENT.fullmatch(value):
            raise ValueError(f"{value!r} is not a folder name under /sys/class/firmware-attributes")
        return value

    @model_validator(mode="after")
    def _one_method(self) -> AxisConfig:
        if self.firmware_attribute is not None and self.command:
            raise ValueError("give `firmware_attribute` (with `values`) or `command`, not both")
        if self.firmware_attribute is not None:
            if not self.values:
                raise ValueError(
                    "`firmware_attribute` needs `values`: configuration value -> the "
                    'attribute\'s value, e.g. {512M: "512MB", 32G: "32GB"}'
                )
            for key, value in self.values.items():
                if not value.strip() or "\n" in value:
                    raise ValueError(f"values.{key}: {value!r} is not a one-line firmware value")
            return self
        if not self.command:
            raise ValueError("give `firmware_attribute` (with `values`) or `command` (argv)")
        if self.values or self.driver is not None:
            raise ValueError("`values` and `driver` belong to `firmware_attribute`")
        _check_placeholders(self.command)
        return self

    @property
    def method(self) -> str:
        return "firmware" if self.firmware_attribute is not None else "command"


def _check_placeholders(command: list[str]) -> None:
    filled = False
    for part in command:
        try:
            fields = list(Formatter().parse(part))
        except ValueError as exc:  # "{value" or a lone "}"
            raise ValueError(f"command part {part!r}: {exc} (write {{{{ for a brace)") from None
        for _, name, spec, conversion in fields:
            if name is None:
                continue
            if name != "value" or spec or conversion:
                raise ValueError(f"command part {part!r}: only {{value}} may be filled in")
            filled = True
    if not filled:
        raise ValueError("`command` must say where the value goes: {value} in one argument")


class ReconfigureConfig(BaseModel):
    """The owner's consent to unattended reconfiguration, and its limits (see module doc)."""

    model_config = ConfigDict(extra="forbid")

    vram_split: AxisConfig | None = None
    ttm_pages_limit: AxisConfig | None = None
    # Needed when the BIOS has an admin password; resolved against worker.yaml's folder.
    bios_password_file: Path | None = None
    reboot_command: list[str] = Field(default=["systemctl", "reboot"], min_length=1)
    max_reboots_per_campaign: int = Field(default=4, ge=1)
    # Whatever the campaigns: anyone who can write to the broker can name new ones.
    max_reboots_per_day: int = Field(default=12, ge=1)
    allowed_hours: str | None = None  # "HH:MM-HH:MM", local time; None = any time
    restore: bool = False

    @model_validator(mode="before")
    @classmethod
    def _known_axes(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(str(key) for key in data if key not in cls.model_fields)
            if unknown:
                raise ValueError(
                    f"{', '.join(unknown)}: not a configuration axis (known: "
                    f"{', '.join(CONFIGURATION_AXES)}) nor a reconfigure option"
                )
        return data

    @field_validator("vram_split", "ttm_pages_limit")
    @classmethod
    def _normalize_values(cls, axis: AxisConfig | None, info: Any) -> AxisConfig | None:
        if axis is None or not axis.values:
            return axis
        normalize = NORMALIZE[info.field_name]
        values: dict[str, str] = {}
        for key, value in axis.values.items():
            label = normalize(key)  # a ValueError names the bad key
            if label in values:
                raise ValueError(f"values: {key!r} and another key are both {label}")
            values[label] = value
        return axis.model_copy(update={"values": values})

    @field_validator("allowed_hours")
    @classmethod
    def _hours(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _HOURS.match(value.strip())
        if not match:
            raise ValueError(f"{value!r}: expected HH:MM-HH:MM in local time, e.g. 22:00-06:00")
        if match.group(1, 2) == match.group(3, 4):
            raise ValueError(f"{value!r} is an empty window; leave allowed_hours out for any time")
        return value.strip()

    @model_validator(mode="after")
    def _has_axis(self) -> ReconfigureConfig:
        if not self.axes:
            raise ValueError(f"name at least one axis to switch: {', '.join(CONFIGURATION_AXES)}")
        return self

    @property
    def axes(self) -> dict[str, AxisConfig]:
        """The axes this box may switch, in CONFIGURATION_AXES order."""
        found = {axis: getattr(self, axis) for axis in CONFIGURATION_AXES}
        return {axis: config for axis, config in found.items() if config is not None}

    def within_allowed_hours(self, now: time) -> bool:
        """Whether `now` (local wall time) falls in the window; [start, end), may wrap midnight."""
        if self.allowed_hours is None:
            return True
        start_text, end_text = self.allowed_hours.split("-")
        start, end = time.fromisoformat(start_text), time.fromisoformat(end_text)
        now = now.replace(second=0, microsecond=0, tzinfo=None)
        if start < end:
            return start <= now < end
        return now >= start or now < end  # wraps midnight: 22:00-06:00
