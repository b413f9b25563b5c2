"""Device names from the PCI id table (pciutils/hwdata `pci.ids`), the offline fallback.

Format (header of pci.ids): a vendor line `1002  Advanced Micro Devices, Inc. [AMD/ATI]` at
the margin, its devices one tab in (`\\t1586  Strix Halo [...]`), subsystems two tabs in.
"""

from __future__ import annotations

from pathlib import Path

from worker.sysfs import read_text

# Debian/Ubuntu (hwdata, pciutils) and older layouts.
PCI_IDS_FILES = ("usr/share/hwdata/pci.ids", "usr/share/misc/pci.ids")


def lookup_pci_name(text: str, pci_id: str) -> str | None:
    """`pci_id` "1002:1586" -> "Strix Halo [Radeon Graphics / ...]", or None."""
    vendor, _, device = pci_id.lower().partition(":")
    in_vendor = False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if not line.startswith("\t"):
            if in_vendor:
                return None  # left the vendor's section without finding the device
            in_vendor = line[:4].lower() == vendor
            continue
        if in_vendor and not line.startswith("\t\t") and line[1:5].lower() == device:
            return line[5:].strip()
    return None


def read_pci_ids(root: Path) -> str | None:
    for name in PCI_IDS_FILES:
        text = read_text(root / name)
        if text is not None:
            return text
    return None
