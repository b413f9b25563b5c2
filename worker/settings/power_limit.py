"""The box's power limit, in watts: through a GPU's hwmon `power1_cap`, or a command the owner
names (ryzenadj on Strix Halo, `nvidia-smi -pl` on NVIDIA).

`hwmon` writes microwatts to `power1_cap` of the first DRM card that has one (or `card:`), and
keeps inside `power1_cap_min`/`power1_cap_max`. amdgpu hides `power1_cap` on most APUs, so on
Strix Halo the owner lists a command instead, e.g.::

    setters:
      power_limit_w:
        method: command
        command: [ryzenadj, "--stapm-limit={mw}", "--fast-limit={mw}", "--slow-limit={mw}"]
        restore_w: 120
        min_w: 45
        max_w: 140

A command cannot be read back, so the result says `read_back: None` and the value is put back
to `restore_w` after the job.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from jobs.inventory import SetterInfo
from worker.errors import SettingError
from worker.settings.base import Setter, register_setter
from worker.sysfs import read_int

_COMMAND_TIMEOUT_S = 60


def _watts(micro_w: int) -> str:
    return f"{micro_w / 1e6:g}"


@register_setter("power_limit_w", "hwmon")
class HwmonPowerCap(Setter):
    def _cap_file(self) -> Path:
        drm = self.root / "sys" / "class" / "drm"
        pattern = f"{self.config.card or 'card*'}/device/hwmon/hwmon*/power1_cap"
        found = sorted(p for p in drm.glob(pattern) if read_int(p) is not None)
        if not found:
            raise SettingError(f"no readable power1_cap under {drm}/{pattern}")
        if len(found) > 1:  # an APU beside a dGPU: capping the wrong one would mislabel runs
            cards = ", ".join(p.parents[3].name for p in found)
            raise SettingError(f"several cards have a power1_cap ({cards}): name one with `card:`")
        return found[0]

    def read(self) -> str | None:
        try:
            micro_w = read_int(self._cap_file())
        except SettingError:
            return None
        return None if micro_w is None else _watts(micro_w)

    def info(self) -> SetterInfo:
        low, high = self.config.min_w, self.config.max_w
        try:
            cap = self._cap_file()
        except SettingError:
            return SetterInfo(method=self.method, min_w=low, max_w=high)
        # The driver's own bounds narrow the owner's.
        hw_min, hw_max = (
            read_int(cap.with_name("power1_cap_min")),
            read_int(cap.with_name("power1_cap_max")),
        )
        if hw_min is not None:
            low = max(low or 0.0, hw_min / 1e6)
        if hw_max is not None:
            high = min(high or float("inf"), hw_max / 1e6)
        return SetterInfo(method=self.method, min_w=low, max_w=high)

    def apply(self, value: str) -> None:
        cap = self._cap_file()
        try:
            cap.write_text(f"{round(float(value) * 1e6)}\n")
        except OSError as exc:
            raise SettingError(f"cannot write {value} W to {cap}: {exc.strerror}") from exc


@register_setter("power_limit_w", "command")
class CommandPowerLimit(Setter):
    def read(self) -> str | None:
        return None  # the command sets; nothing portable reads it back

    def restore_value(self, previous: str | None) -> str | None:
        return f"{self.config.restore_w:g}" if self.config.restore_w is not None else None

    def apply(self, value: str) -> None:
        watts = float(value)
        argv = [
            part.format(w=f"{watts:g}", mw=round(watts * 1000), uw=round(watts * 1e6))
            for part in self.config.command
        ]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SettingError(f"power limit command {argv[0]} failed: {exc}") from exc
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise SettingError(
                f"power limit command {' '.join(argv)} exited {done.returncode}"
                + (f": {said[-1]}" if said else "")
            )
