"""NVIDIA GPUs and driver from `nvidia-smi --query-gpu`.

`nvidia-smi --help-query-gpu` documents the fields; with `--format=csv,noheader,nounits` each
GPU is one line, e.g. `00000000:01:00.0, NVIDIA GeForce RTX 4090, 550.54.14, 24564, 450.00`
(memory.total in MiB, power.limit in W), and a field the GPU lacks reads `[N/A]` (or
`[Not Supported]` on older drivers). The proprietary driver often has no DRM card in sysfs
(nvidia-drm not loaded on servers), so these GPUs are added even when DRM does not list them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

from worker.facts._common import FactLog
from worker.facts.tools import ToolError, Tools, last_words

QUERY_FIELDS = ("pci.bus_id", "name", "driver_version", "memory.total", "power.limit")
ARGV_QUERY = (f"--query-gpu={','.join(QUERY_FIELDS)}", "--format=csv,noheader,nounits")
MiB = 1024**2


@dataclass(frozen=True)
class NvidiaGpu:
    pci_slot: str  # normalized like sysfs: "0000:01:00.0"
    name: str
    driver_version: str | None
    memory_total_bytes: int | None
    power_limit_w: float | None


def normalize_bus_id(bus_id: str) -> str:
    """nvidia-smi's "00000000:4F:00.0" -> sysfs's "0000:4f:00.0"."""
    domain, sep, rest = bus_id.strip().lower().partition(":")
    if not sep:
        return bus_id.strip().lower()
    try:
        return f"{int(domain, 16):04x}:{rest}"
    except ValueError:
        return bus_id.strip().lower()


def _value(cell: str) -> str | None:
    cell = cell.strip()
    return None if not cell or cell.startswith("[") else cell


def _number(cell: str) -> float | None:
    value = _value(cell)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def parse_nvidia_smi(text: str) -> list[NvidiaGpu]:
    gpus: list[NvidiaGpu] = []
    for row in csv.reader(text.splitlines(), skipinitialspace=True):
        if len(row) != len(QUERY_FIELDS):
            continue
        bus_id, name, driver, memory_mib, power_w = row
        memory = _number(memory_mib)
        gpus.append(
            NvidiaGpu(
                pci_slot=normalize_bus_id(bus_id),
                name=name.strip(),
                driver_version=_value(driver),
                memory_total_bytes=int(memory * MiB) if memory is not None else None,
                power_limit_w=_number(power_w),
            )
        )
    return gpus


def probe_nvidia(tools: Tools, log: FactLog) -> list[NvidiaGpu]:
    binary = tools.which("nvidia-smi")
    if binary is None:
        log.note("nvidia: nvidia-smi not on PATH (no NVIDIA driver)")
        return []
    try:
        output = tools.call([binary, *ARGV_QUERY])
    except ToolError as exc:
        log.note(f"nvidia: {exc}")
        return []
    gpus = parse_nvidia_smi(output.stdout)
    if not gpus:
        log.note(
            f"nvidia: nvidia-smi listed no GPU (exit {output.returncode}: {last_words(output)})"
        )
    return gpus
