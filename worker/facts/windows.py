"""Host facts on Windows: one PowerShell CIM query as JSON, and the active power plan.

`WINDOWS_FACTS_PS` prints one JSON object with the CIM classes (Win32_OperatingSystem,
Win32_ComputerSystem, Win32_Processor, Win32_VideoController; property names as documented on
learn.microsoft.com, "Win32_VideoController class", retrieved 2025) and the display adapters'
registry key `HardwareInformation.qwMemorySize`: the dedicated memory as a 64-bit number, since
Win32_VideoController.AdapterRAM is a uint32 that stops at 4 GiB. On an APU the dedicated
memory is the BIOS carve-out (`vram_split`), as on Linux.

`powercfg /getactivescheme` prints `Power Scheme GUID: <guid>  (<name>)`: the name is recorded as
`platform_profile` (Windows' power plan, the nearest thing to ACPI platform_profile).

Not read: the shared GPU memory budget (DXGI's SharedSystemMemory has no CIM or registry
source; PDH `\\GPU Adapter Memory(*)\\Shared Usage` gives what is in use, as telemetry).
"""

from __future__ import annotations

import json
import re
from typing import Any

from jobs.facts import GpuFacts
from worker.facts._common import FactLog
from worker.facts.gpu import carve_out_label
from worker.facts.tools import ToolError, Tools, last_words

# Runs in Windows PowerShell 5.1 and PowerShell 7; -Compress keeps it one line.
WINDOWS_FACTS_PS = (
    "$ErrorActionPreference='SilentlyContinue';"
    "$v=Get-ItemProperty 'HKLM:\\SYSTEM\\CurrentControlSet\\Control\\Class\\"
    "{4d36e968-e325-11ce-bfc1-08002be10318}\\0*';"
    "[pscustomobject]@{"
    "os=Get-CimInstance Win32_OperatingSystem|Select-Object Caption,Version,BuildNumber,CSName;"
    "computer=Get-CimInstance Win32_ComputerSystem|Select-Object Name,TotalPhysicalMemory;"
    "cpus=@(Get-CimInstance Win32_Processor|Select-Object Name,NumberOfCores,"
    "NumberOfLogicalProcessors);"
    "gpus=@(Get-CimInstance Win32_VideoController|Select-Object Name,DriverVersion,AdapterRAM,"
    "PNPDeviceID,AdapterCompatibility);"
    "vram=@($v|Select-Object DriverDesc,'HardwareInformation.qwMemorySize')"
    "}|ConvertTo-Json -Depth 4 -Compress"
)
POWERSHELL_ARGV = ("powershell", "-NoProfile", "-NonInteractive", "-Command", WINDOWS_FACTS_PS)
POWERCFG_ARGV = ("powercfg", "/getactivescheme")
_PCI = re.compile(r"VEN_([0-9A-F]{4})&DEV_([0-9A-F]{4})", re.I)
_SCHEME = re.compile(r"GUID:\s*([0-9a-f-]{36})\s*\((.+)\)\s*$", re.I | re.M)
_TRADEMARK = re.compile(r"\((tm|r)\)", re.I)
_UINT32_CAP = 2**32 - 1 - 2**20  # AdapterRAM reads ~4 GiB - 1 MiB when the real size is larger


def _list(value: Any) -> list[dict[str, Any]]:
    """ConvertTo-Json prints a one-element array as a bare object."""
    items = value if isinstance(value, list) else [value] if value else []
    return [item for item in items if isinstance(item, dict)]


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def parse_power_scheme(text: str) -> str | None:
    match = _SCHEME.search(text)
    return match[2].strip() if match else None


def parse_windows_facts(text: str, log: FactLog) -> dict[str, Any]:
    """HostFacts fields from WINDOWS_FACTS_PS's JSON (gpus as GpuFacts); what is missing is
    left out with a note."""
    try:
        data = json.loads(text.lstrip("\ufeff"))
    except ValueError as exc:
        log.note(f"windows: the PowerShell facts query printed no JSON: {exc}")
        return {}
    if not isinstance(data, dict):
        log.note("windows: the PowerShell facts query printed no JSON object")
        return {}
    facts: dict[str, Any] = {}
    os_info = (_list(data.get("os")) or [{}])[0]
    computer = (_list(data.get("computer")) or [{}])[0]
    facts["hostname"] = computer.get("Name") or os_info.get("CSName")
    facts["os"] = os_info.get("Caption")
    facts["kernel"] = os_info.get("Version")
    facts["ram_bytes"] = _int(computer.get("TotalPhysicalMemory"))
    cpus = _list(data.get("cpus"))
    if cpus:
        facts["cpu_model"] = str(cpus[0].get("Name") or "").strip() or None
        facts["cpu_cores"] = sum(_int(c.get("NumberOfCores")) or 0 for c in cpus) or None
        threads = sum(_int(c.get("NumberOfLogicalProcessors")) or 0 for c in cpus)
        facts["cpu_threads"] = threads or None
    for key in ("hostname", "os", "kernel", "ram_bytes", "cpu_model"):
        if facts.get(key) is None:
            log.note(f"{key}: not in the Win32_* CIM answer")
        else:
            log.source(key, "PowerShell Get-CimInstance Win32_*")
    facts["gpus"] = _gpus(data, facts.get("cpu_model"), log)
    return facts


def _gpus(data: dict[str, Any], cpu_model: str | None, log: FactLog) -> list[GpuFacts]:
    dedicated = {
        str(entry.get("DriverDesc")): size
        for entry in _list(data.get("vram"))
        if (size := _int(entry.get("HardwareInformation.qwMemorySize"))) is not None
    }
    apu_name = cpu_model.split(" w/ ", 1)[1].strip() if cpu_model and " w/ " in cpu_model else None
    gpus = []
    for gpu in _list(data.get("gpus")):
        name = str(gpu.get("Name") or "").strip()
        if not name or name == "Microsoft Basic Display Adapter":
            continue
        pci = _PCI.search(str(gpu.get("PNPDeviceID") or ""))
        size = dedicated.get(name)
        if size is None:
            size = _int(gpu.get("AdapterRAM"))
            if size is not None and size >= _UINT32_CAP:
                log.note(f"gpus: {name}: AdapterRAM stops at 4 GiB and the registry had no size")
                size = None
        gpus.append(
            GpuFacts(
                name=name,
                driver=str(gpu.get("DriverVersion") or "") or None,
                pci_id=f"{pci[1]}:{pci[2]}".lower() if pci else None,
                vram_total_bytes=size,
                is_apu=_is_apu(name, apu_name, pci[1] if pci else None, size),
            )
        )
    return gpus


def _words(name: str) -> set[str]:
    return set(_TRADEMARK.sub(" ", name.lower()).split()) - {"amd", "radeon", "graphics"}


def _is_apu(name: str, apu_name: str | None, vendor: str | None, size: int | None) -> bool | None:
    """True when the CPU's name carries this GPU ("... w/ Radeon 8060S"), or for an AMD GPU
    with under 1 GiB dedicated (no AMD dGPU has so little: the Linux rule in amdgpu.py)."""
    if apu_name and _words(apu_name) and _words(apu_name) <= _words(name):
        return True
    if vendor is not None and vendor.lower() == "1002" and size is not None and size < 2**30:
        return True
    return None


def detect_windows(tools: Tools, log: FactLog) -> dict[str, Any]:
    """HostFacts fields read with PowerShell and powercfg (empty with notes where they fail)."""
    facts: dict[str, Any] = {}
    try:
        done = tools.call(POWERSHELL_ARGV)
        if done.returncode == 0:
            facts = parse_windows_facts(done.stdout, log)
        else:
            log.note(f"windows: PowerShell facts query exited {done.returncode}: "
                     f"{last_words(done)}")  # fmt: skip
    except ToolError as exc:
        log.note(f"windows: {exc}")
    apu = next((gpu for gpu in facts.get("gpus", []) if gpu.is_apu), None)
    if apu is not None and apu.vram_total_bytes is not None:
        facts["vram_split"] = carve_out_label(apu.vram_total_bytes)
        log.source("vram_split", f"registry HardwareInformation.qwMemorySize of {apu.name}")
    else:
        log.note("vram_split: no integrated GPU with a known dedicated memory size")
    try:
        done = tools.call(POWERCFG_ARGV)
        scheme = parse_power_scheme(done.stdout) if done.returncode == 0 else None
    except ToolError as exc:
        log.note(f"platform_profile: {exc}")
        scheme = None
    if scheme is not None:
        facts["platform_profile"] = scheme
        log.source("platform_profile", "powercfg /getactivescheme (the power plan)")
    return facts
