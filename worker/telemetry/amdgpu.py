"""amdgpu sysfs: whole-GPU busy %, VRAM/GTT use, power and temperature.

Reads `/sys/class/drm/cardN/device/` of every card bound to amdgpu (kernel doc
Documentation/gpu/amdgpu/thermal.rst and driver-misc.rst):
`gpu_busy_percent`, `mem_info_vram_used|total`, `mem_info_gtt_used|total` (bytes), and hwmon
`power1_average` (else `power1_input`, µW) and `temp1_input` (m°C, the edge sensor).

Several amdgpu cards (an APU plus a dGPU) are summed for memory and power, averaged for busy %,
and the hottest one is reported.

Whether power includes the CPU: hwmon power is socket power, which on an APU covers the CPU
cores too. The driver's `gpu_metrics` blob tells APUs apart: its header's format revision is 1
for dGPU tables and 2 or 3 for APU tables (`gpu_metrics_v2_*`, `v3_0` in kgd_pp_interface.h).
Where that file is missing, a carve-out under 1 GiB (`mem_info_vram_total`) means an APU (no
dGPU amdgpu drives has so little); otherwise the answer is unknown (None), and `apu=` decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from jobs.telemetry import SourceStatus
from worker.sysfs import read_int, read_text
from worker.telemetry.base import Source, register_source

_CARD = re.compile(r"card\d+$")  # not the connectors (card1-eDP-1) nor render nodes
_APU_VRAM_BELOW_BYTES = 1 << 30
# (metric, file under device/), summed over cards
# (metric, file under device/), summed over cards. The totals are host facts, not samples:
# they go into the status detail only.
_MEMORY_FILES = (
    ("vram_used_bytes", "mem_info_vram_used"),
    ("gtt_used_bytes", "mem_info_gtt_used"),
)


@dataclass(frozen=True)
class _Card:
    name: str
    device: Path
    power_file: Path | None
    temp_file: Path | None
    apu: bool | None


def is_apu(device: Path) -> bool | None:
    """True for an APU (power includes the CPU), False for a dGPU, None when unknown."""
    try:
        with open(device / "gpu_metrics", "rb") as handle:
            header = handle.read(4)
    except OSError:
        header = b""
    if len(header) == 4:
        # struct metrics_table_header { u16 structure_size; u8 format_revision; u8 content_rev }
        return header[2] >= 2
    vram_total = read_int(device / "mem_info_vram_total")
    if vram_total is not None and vram_total < _APU_VRAM_BELOW_BYTES:
        return True
    return None


def amdgpu_devices(root: Path) -> list[Path]:
    """`device/` folders of every DRM card bound to amdgpu under `root`."""
    drm = root / "sys" / "class" / "drm"
    try:
        cards = sorted(p for p in drm.iterdir() if _CARD.match(p.name))
    except OSError:
        return []
    found = []
    for card in cards:
        uevent = read_text(card / "device" / "uevent") or ""
        if "DRIVER=amdgpu" in uevent.split():
            found.append(card / "device")
    return found


def _hwmon_file(device: Path, names: tuple[str, ...]) -> Path | None:
    """The first readable file among `names` in the card's amdgpu hwmon folder."""
    try:
        folders = sorted((device / "hwmon").iterdir())
    except OSError:
        return None
    for folder in folders:
        for name in names:
            # Reading, not just existing: power1_average exists on some APUs but fails (EINVAL).
            if read_int(folder / name) is not None:
                return folder / name
    return None


@register_source("amdgpu", precedence=20, platforms=("linux",))
class AmdGpu(Source):
    """Whole-device readings of every amdgpu card; `apu` overrides the APU detection."""

    def __init__(self, root: Path = Path("/"), apu: bool | None = None) -> None:
        super().__init__(root)
        self.apu_override = apu
        self._cards: list[_Card] = []

    def probe(self) -> SourceStatus:
        devices = amdgpu_devices(self.root)
        if not devices:
            where = self.root / "sys" / "class" / "drm"
            return self.status(False, f"no card bound to amdgpu under {where}")
        self._cards = [
            _Card(
                name=device.parent.name,
                device=device,
                power_file=_hwmon_file(device, ("power1_average", "power1_input")),
                temp_file=_hwmon_file(device, ("temp1_input",)),
                apu=self.apu_override if self.apu_override is not None else is_apu(device),
            )
            for device in devices
        ]
        parts = []
        for card in self._cards:
            kind = {True: "APU", False: "dGPU", None: "APU or dGPU unknown"}[card.apu]
            power = card.power_file.name if card.power_file else "no power reading"
            sizes = [
                f"{label} {size / 2**30:.1f} GiB"
                for label, name in (("VRAM", "mem_info_vram_total"), ("GTT", "mem_info_gtt_total"))
                if (size := read_int(card.device / name)) is not None
            ]
            parts.append(f"{card.name} ({', '.join([kind, *sizes, power])})")
        flags = {card.apu for card in self._cards if card.power_file is not None}
        includes_cpu = True if True in flags else (False if flags == {False} else None)
        return self.status(True, "; ".join(parts), power_includes_cpu=includes_cpu)

    def sample(self, now: float) -> dict[str, float]:
        out: dict[str, float] = {}
        busy: list[int] = []
        temps: list[float] = []
        for card in self._cards:
            value = read_int(card.device / "gpu_busy_percent")
            if value is not None:
                busy.append(value)
            for metric, name in _MEMORY_FILES:
                value = read_int(card.device / name)
                if value is not None:
                    out[metric] = out.get(metric, 0.0) + value
            if card.power_file is not None:
                micro_w = read_int(card.power_file)
                if micro_w is not None:
                    out["power_w"] = out.get("power_w", 0.0) + micro_w / 1e6
            if card.temp_file is not None:
                milli_c = read_int(card.temp_file)
                if milli_c is not None:
                    temps.append(milli_c / 1000)
        if busy:
            out["gpu_busy_pct"] = sum(busy) / len(busy)
        if temps:
            out["gpu_temp_c"] = max(temps)
        return out
