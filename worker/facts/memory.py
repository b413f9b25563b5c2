"""System RAM from /proc/meminfo.

MemTotal is what the OS got: on an APU the BIOS carve-out is already gone from it (a 128 GB
Strix Halo box with a 96G carve-out reports about 31 GiB), which is why it is recorded beside
`vram_split` and not instead of it.
"""

from __future__ import annotations

from pathlib import Path

from worker.facts._common import FactLog, shown
from worker.sysfs import parse_meminfo, read_int, read_text

MEMINFO = "proc/meminfo"


TTM_PAGES_LIMIT = "sys/module/ttm/parameters/pages_limit"


def read_ttm_pages_limit(root: Path, log: FactLog) -> int | None:
    """The kernel's TTM page limit (`ttm.pages_limit`, 4 KiB pages): how much system RAM GPU
    drivers may map, GTT included. Set on the kernel command line or in modprobe.d; the kernel's
    default is half of RAM. None when the ttm module is not loaded."""
    path = root / TTM_PAGES_LIMIT
    pages = read_int(path)
    if pages is None:
        log.note(f"ttm_pages_limit: {shown(root, path)} is missing or unreadable (ttm not loaded)")
        return None
    log.source("ttm_pages_limit", f"{shown(root, path)} = {pages}")
    return pages


def read_ram_bytes(root: Path, log: FactLog) -> int | None:
    text = read_text(root / MEMINFO)
    if text is None:
        log.note("ram_bytes: /proc/meminfo is missing or unreadable")
        return None
    total = parse_meminfo(text).get("MemTotal")
    if total is None:
        log.note("ram_bytes: /proc/meminfo has no MemTotal line")
    return total
