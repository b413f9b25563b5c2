"""Host facts on macOS (Apple Silicon): sysctl, sw_vers and system_profiler.

- `sysctl hw.memsize hw.physicalcpu hw.logicalcpu machdep.cpu.brand_string kern.hostname
  kern.osrelease` prints `name: value` lines (sysctl(8)); `hw.memsize` is the unified memory in
  bytes, shared by CPU and GPU (there is no carve-out: `vram_split` stays None).
- `sw_vers` prints `ProductName:`, `ProductVersion:`, `BuildVersion:` lines.
- `system_profiler SPDisplaysDataType -json` lists the GPU (`sppci_model`, `sppci_cores`).
"""

from __future__ import annotations

import json
from typing import Any

from jobs.facts import GpuFacts
from worker.facts._common import FactLog
from worker.facts.tools import ToolError, Tools

SYSCTL_KEYS = ("hw.memsize", "hw.physicalcpu", "hw.logicalcpu", "machdep.cpu.brand_string",
               "kern.hostname", "kern.osrelease")  # fmt: skip
SYSCTL_ARGV = ("sysctl", *SYSCTL_KEYS)
SW_VERS_ARGV = ("sw_vers",)
PROFILER_ARGV = ("system_profiler", "SPDisplaysDataType", "-json")


def parse_colon_lines(text: str) -> dict[str, str]:
    """`name: value` lines (sysctl, sw_vers) -> dict; the first colon splits."""
    found = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            found[key.strip()] = value.strip()
    return found


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def parse_displays(text: str) -> list[GpuFacts]:
    """GPUs from `system_profiler SPDisplaysDataType -json` (all integrated on Apple Silicon)."""
    try:
        data = json.loads(text)
    except ValueError:
        return []
    items = data.get("SPDisplaysDataType") if isinstance(data, dict) else None
    gpus = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not item.get("sppci_model"):
            continue
        cores = str(item.get("sppci_cores") or "")
        name = str(item["sppci_model"]) + (f" ({cores}-core GPU)" if cores.isdigit() else "")
        apple = str(item.get("spdisplays_vendor", "")).lower().find("apple") >= 0
        gpus.append(GpuFacts(name=name, driver="Metal" if apple else None,
                             is_apu=True if apple else None))  # fmt: skip
    return gpus


def detect_macos(tools: Tools, log: FactLog) -> dict[str, Any]:
    """HostFacts fields of a Mac (empty with notes where a tool fails)."""
    facts: dict[str, Any] = {}
    outputs: dict[str, str] = {}
    for key, argv in (("sysctl", SYSCTL_ARGV), ("sw_vers", SW_VERS_ARGV),
                      ("system_profiler", PROFILER_ARGV)):  # fmt: skip
        try:
            done = tools.call(argv)
        except ToolError as exc:
            log.note(f"macos: {exc}")
            continue
        if done.returncode == 0:
            outputs[key] = done.stdout
        else:
            log.note(f"macos: `{' '.join(argv)}` exited {done.returncode}")
    sysctl = parse_colon_lines(outputs.get("sysctl", ""))
    facts["hostname"] = sysctl.get("kern.hostname") or None
    facts["kernel"] = sysctl.get("kern.osrelease") or None
    facts["cpu_model"] = sysctl.get("machdep.cpu.brand_string") or None
    facts["cpu_cores"] = _int(sysctl.get("hw.physicalcpu")) or None
    facts["cpu_threads"] = _int(sysctl.get("hw.logicalcpu")) or None
    facts["ram_bytes"] = _int(sysctl.get("hw.memsize"))
    for key in ("hostname", "kernel", "cpu_model", "ram_bytes"):
        if facts[key] is None:
            log.note(f"{key}: not in `sysctl` output")
        else:
            log.source(key, "sysctl " + " ".join(SYSCTL_KEYS))
    vers = parse_colon_lines(outputs.get("sw_vers", ""))
    if vers.get("ProductVersion"):
        build = f" ({vers['BuildVersion']})" if vers.get("BuildVersion") else ""
        facts["os"] = f"{vers.get('ProductName', 'macOS')} {vers['ProductVersion']}{build}"
        log.source("os", "sw_vers")
    else:
        log.note("os: sw_vers printed no ProductVersion")
    facts["gpus"] = parse_displays(outputs.get("system_profiler", ""))
    if facts["gpus"]:
        log.note("vram_split: unified memory: the GPU shares ram_bytes, there is no carve-out")
    return facts
