"""RAPL package energy via powercap: CPU package power (on AMD too).

`/sys/class/powercap/intel-rapl:N/energy_uj` is a cumulative µJ counter that wraps to 0 after
`max_energy_range_uj`; power = energy increase / wall time. One zone per CPU package (sub-zones
such as `intel-rapl:0:0`, the cores, are inside it and are not added again).

Since Linux 5.10 `energy_uj` is readable by root only (a power side channel, CVE-2020-8694):
an unprivileged worker gets an unavailable status saying so.
"""

from __future__ import annotations

import re
from pathlib import Path

from jobs.telemetry import SourceStatus
from worker.sysfs import read_int, read_text
from worker.telemetry.base import Source, register_source, why_unreadable

_PACKAGE_ZONE = re.compile(r"intel-rapl:\d+$")


@register_source("rapl", precedence=40, platforms=("linux",))
class Rapl(Source):
    """Summed package power of every RAPL package zone."""

    def __init__(self, root: Path = Path("/")) -> None:
        super().__init__(root)
        self._zones: list[tuple[Path, int]] = []  # (energy_uj file, wrap range)
        self._last: tuple[float, list[int]] | None = None

    def probe(self) -> SourceStatus:
        powercap = self.root / "sys" / "class" / "powercap"
        try:
            zones = sorted(p for p in powercap.iterdir() if _PACKAGE_ZONE.match(p.name))
        except OSError:
            zones = []
        if not zones:
            return self.status(False, f"no RAPL package zone under {powercap}")
        self._zones, names = [], []
        for zone in zones:
            energy = zone / "energy_uj"
            if read_int(energy) is None:
                return self.status(False, why_unreadable(energy))
            wrap = read_int(zone / "max_energy_range_uj")
            if wrap is None or wrap <= 0:
                return self.status(False, why_unreadable(zone / "max_energy_range_uj"))
            self._zones.append((energy, wrap))
            names.append(f"{zone.name} ({(read_text(zone / 'name') or '?').strip()})")
        self._last = None
        return self.status(True, ", ".join(names), power_includes_cpu=True)

    def sample(self, now: float) -> dict[str, float]:
        readings = [read_int(energy) for energy, _ in self._zones]
        if any(value is None for value in readings):
            self._last = None  # a failed read breaks the chain; start over
            return {}
        values = [value for value in readings if value is not None]
        last, self._last = self._last, (now, values)
        if last is None or now <= last[0]:
            return {}
        energy_uj = 0
        for (_, wrap), old, new in zip(self._zones, last[1], values, strict=True):
            # The counter runs from 0 to wrap, then starts at 0 again.
            energy_uj += new - old if new >= old else wrap - old + new
        return {"package_power_w": energy_uj / 1e6 / (now - last[0])}
