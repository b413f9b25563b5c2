"""CPU model, physical cores and hardware threads, from /proc/cpuinfo.

Cores are counted as distinct (physical id, core id) pairs, which is what SMT hides: a Ryzen AI
Max+ 395 lists 32 `processor` blocks but 16 cores. ARM kernels print neither id, so the sysfs
topology files (`/sys/devices/system/cpu/cpuN/topology/`) answer there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from worker.facts._common import FactLog
from worker.sysfs import read_int, read_text

CPUINFO = "proc/cpuinfo"
CPU_SYSFS = "sys/devices/system/cpu"
_CPU_DIR = re.compile(r"^cpu\d+$")


@dataclass(frozen=True)
class CpuInfo:
    model: str | None
    cores: int | None
    threads: int | None


def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """One dict per `processor` block (blocks are separated by a blank line)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if "processor" in current:
                blocks.append(current)
            current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
    return blocks


def cpu_from_blocks(blocks: list[dict[str, str]]) -> CpuInfo:
    threads = len(blocks) or None
    model = next((b["model name"] for b in blocks if b.get("model name")), None)
    cores: int | None = None
    if blocks and all("core id" in b for b in blocks):
        cores = len({(b.get("physical id", "0"), b["core id"]) for b in blocks})
    return CpuInfo(model=model, cores=cores, threads=threads)


def read_cpu(root: Path, log: FactLog) -> CpuInfo:
    text = read_text(root / CPUINFO)
    if text is None:
        log.note("cpu: /proc/cpuinfo is missing or unreadable")
        return CpuInfo(model=None, cores=None, threads=None)
    info = cpu_from_blocks(parse_cpuinfo(text))
    if info.cores is None:
        info = CpuInfo(model=info.model, cores=_cores_from_sysfs(root), threads=info.threads)
    if info.model is None:
        log.note("cpu_model: /proc/cpuinfo has no 'model name' line (not an x86 kernel?)")
    if info.cores is None:
        log.note(
            "cpu_cores: neither /proc/cpuinfo core ids nor "
            "/sys/devices/system/cpu/cpu*/topology/core_id could be read"
        )
    return info


def _cores_from_sysfs(root: Path) -> int | None:
    base = root / CPU_SYSFS
    if not base.is_dir():
        return None
    pairs: set[tuple[int, int]] = set()
    for cpu in base.iterdir():
        if not _CPU_DIR.match(cpu.name):
            continue
        core = read_int(cpu / "topology" / "core_id")
        package = read_int(cpu / "topology" / "physical_package_id")
        if core is None:
            return None
        pairs.add((package or 0, core))
    return len(pairs) or None
