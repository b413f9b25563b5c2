"""GPUs as DRM lists them: `/sys/class/drm/cardN/device/` and its hwmon folder.

amdgpu writes sizes in bytes (`mem_info_vram_total`, `mem_info_vis_vram_total`,
`mem_info_gtt_total`; kernel doc "Misc AMDGPU driver information") and powers in microwatts
(hwmon `power1_cap`; kernel doc "amdgpu hwmon interfaces").

APU or discrete is not a sysfs attribute, but amdgpu's hwmon shows it (amdgpu_pm.c,
`hwmon_attributes_visible`): `in1` ("vddnb") exists only on APUs, `freq2` ("mclk") only on
discrete cards. The same function hides `power1_cap` on every APU except Van Gogh and MI300A, so
on a Strix Halo box the power limit is read from `ryzenadj -i` instead (see ryzenadj.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from worker.facts._common import FactLog, shown
from worker.sysfs import read_int, read_text

DRM = "sys/class/drm"
_CARD = re.compile(r"^card(\d+)$")  # card1-DP-1 and renderD128 are connectors / render nodes
MiB = 1024**2
GiB = 1024**3
# Display adapters with no compute: server BMCs (ast, mgag200), VM consoles, boot framebuffers.
# A GPU server's BMC is card0, and listing it as the box's GPU would mislabel every result.
DISPLAY_ONLY_DRIVERS = frozenset(
    {"ast", "mgag200", "bochs", "bochs-drm", "cirrus", "cirrus-qemu", "hyperv_drm"}
    | {"vmwgfx", "vboxvideo", "simpledrm", "simple-framebuffer", "efifb"}
)


@dataclass
class DrmCard:
    """One `cardN` and what its driver tells about it."""

    card: str
    driver: str | None = None
    pci_id: str | None = None  # "1002:1586"
    pci_slot: str | None = None  # "0000:c5:00.0"
    product_name: str | None = None
    vram_total_bytes: int | None = None
    vis_vram_total_bytes: int | None = None
    gtt_total_bytes: int | None = None
    vram_source: str | None = None  # "/sys/.../mem_info_vram_total = 536870912"
    gtt_source: str | None = None
    is_apu: bool | None = None
    power_cap_w: float | None = None
    power_cap_source: str | None = None


def carve_out_label(size_bytes: int) -> str:
    """A VRAM size as the BIOS menu names it: 536870912 -> "512M", 34359738368 -> "32G".

    Sizes from 1 GiB up round to whole GiB (BIOS steps are 1, 2, 4, 8, 16, 24?, 32, 48, 64,
    96 G); smaller ones to 64 MiB steps (64M, 128M, 256M, 512M), so a driver that reports a
    few MiB less than the setting still names the setting.
    """
    if size_bytes >= GiB - 32 * MiB:
        return f"{max(1, round(size_bytes / GiB))}G"
    mib = size_bytes / MiB
    step = 64 if mib >= 64 else 1
    return f"{max(1, round(mib / step)) * step}M"


def parse_uevent(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def read_drm_cards(root: Path, log: FactLog) -> list[DrmCard]:
    """Every PCI GPU with a DRM card, in card order."""
    drm = root / DRM
    if not drm.is_dir():
        log.note("gpus: /sys/class/drm does not exist (no DRM graphics driver loaded)")
        return []
    names = sorted(
        (p.name for p in drm.iterdir() if _CARD.match(p.name)),
        key=lambda name: int(name[4:]),
    )
    return [card for name in names if (card := _read_card(root, drm / name, log)) is not None]


def _read_card(root: Path, card_dir: Path, log: FactLog) -> DrmCard | None:
    device = card_dir / "device"
    uevent = parse_uevent(read_text(device / "uevent") or "")
    if "PCI_SLOT_NAME" not in uevent:
        # simpledrm/efifb keep a card for the boot framebuffer; it is not a GPU to benchmark.
        log.note(
            f"gpus: {shown(root, card_dir)} ({uevent.get('DRIVER', 'no driver')}) "
            "is not a PCI device: skipped"
        )
        return None
    if uevent.get("DRIVER") in DISPLAY_ONLY_DRIVERS:
        log.note(f"gpus: {card_dir.name} ({uevent['DRIVER']}) is a display-only adapter: skipped")
        return None
    card = DrmCard(
        card=card_dir.name,
        driver=uevent.get("DRIVER"),
        pci_id=uevent.get("PCI_ID", "").lower() or None,
        pci_slot=uevent["PCI_SLOT_NAME"],
        product_name=(read_text(device / "product_name") or "").strip() or None,
    )
    if card.driver == "amdgpu":
        _read_amdgpu(root, device, card, log)
    return card


def _read_amdgpu(root: Path, device: Path, card: DrmCard, log: FactLog) -> None:
    vram = device / "mem_info_vram_total"
    card.vram_total_bytes = read_int(vram)
    card.vis_vram_total_bytes = read_int(device / "mem_info_vis_vram_total")
    gtt = device / "mem_info_gtt_total"
    card.gtt_total_bytes = read_int(gtt)
    if card.vram_total_bytes is not None:
        card.vram_source = f"{shown(root, vram)} = {card.vram_total_bytes}"
    else:
        log.note(f"vram: {shown(root, vram)} is missing or unreadable")
    if card.gtt_total_bytes is not None:
        card.gtt_source = f"{shown(root, gtt)} = {card.gtt_total_bytes}"
    hwmon = _hwmon_dir(device)
    if hwmon is None:
        log.note(f"{card.card}: {shown(root, device / 'hwmon')} has no hwmon folder")
        return
    labels = {name: (read_text(hwmon / f"{name}_label") or "").strip() for name in ("in1", "freq2")}
    if labels["in1"] == "vddnb":
        card.is_apu = True
    elif labels["freq2"] == "mclk":
        card.is_apu = False
    cap = hwmon / "power1_cap"
    cap_uw = read_int(cap)
    if cap_uw:
        card.power_cap_w = cap_uw / 1e6
        card.power_cap_source = f"{shown(root, cap)} = {cap_uw}"


def _hwmon_dir(device: Path) -> Path | None:
    base = device / "hwmon"
    if not base.is_dir():
        return None
    found = sorted(p for p in base.iterdir() if p.name.startswith("hwmon"))
    return found[0] if found else None
