"""Vulkan drivers (Mesa RADV, AMDVLK, NVIDIA) from `vulkaninfo --summary`.

The summary (Vulkan-Tools, vulkaninfo) lists one block per device under "Devices:"::

    GPU0:
            apiVersion         = 1.4.318
            driverVersion      = 25.2.8
            vendorID           = 0x1002
            deviceID           = 0x1586
            deviceType         = PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU
            deviceName         = AMD Radeon 8060S Graphics (RADV STRIX_HALO)
            driverID           = DRIVER_ID_MESA_RADV
            driverName         = radv
            driverInfo         = Mesa 25.2.8-0ubuntu0.24.04.1

Besides the driver version it answers "integrated or discrete" for a PCI id, which sysfs
cannot always. llvmpipe (a CPU rasteriser, `PHYSICAL_DEVICE_TYPE_CPU`) is not a GPU driver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.facts._common import FactLog
from worker.facts.tools import ToolError, Tools, last_words

ARGV_SUMMARY = ("--summary",)
_DEVICE = re.compile(r"^GPU(\d+):\s*$")
_FIELD = re.compile(r"^\s+(\w+)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class VulkanDevice:
    pci_id: str | None  # "1002:1586", from vendorID/deviceID
    device_type: str  # PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU, ..._DISCRETE_GPU, ..._CPU
    device_name: str
    driver_name: str
    driver_info: str

    @property
    def is_gpu(self) -> bool:
        return self.device_type.endswith(("_INTEGRATED_GPU", "_DISCRETE_GPU"))

    @property
    def is_integrated(self) -> bool:
        return self.device_type.endswith("_INTEGRATED_GPU")

    @property
    def driver(self) -> str:
        """ "radv Mesa 25.2.8-0ubuntu0.24.04.1", "NVIDIA 580.95.05"."""
        return " ".join(part for part in (self.driver_name, self.driver_info) if part)


def parse_vulkan_summary(text: str) -> list[VulkanDevice]:
    blocks: list[dict[str, str]] = []
    for line in text.splitlines():
        if _DEVICE.match(line):
            blocks.append({})
        elif blocks and (field := _FIELD.match(line)):
            blocks[-1][field.group(1)] = field.group(2)
        elif blocks and line.strip() and not line[0].isspace():
            blocks.append({})  # a new section ends the device list; ignore what follows
    return [_device(b) for b in blocks if "deviceType" in b]


def _device(fields: dict[str, str]) -> VulkanDevice:
    pci_id = None
    try:
        vendor = int(fields.get("vendorID", ""), 16)
        device = int(fields.get("deviceID", ""), 16)
        pci_id = f"{vendor:04x}:{device:04x}" if vendor <= 0xFFFF else None
    except ValueError:
        pass
    return VulkanDevice(
        pci_id=pci_id,
        device_type=fields["deviceType"],
        device_name=fields.get("deviceName", ""),
        driver_name=fields.get("driverName", ""),
        driver_info=fields.get("driverInfo", fields.get("driverVersion", "")),
    )


def probe_vulkan(tools: Tools, log: FactLog) -> list[VulkanDevice]:
    binary = tools.which("vulkaninfo")
    if binary is None:
        log.note("vulkan: vulkaninfo not on PATH (install vulkan-tools to record the driver)")
        return []
    try:
        output = tools.call([binary, *ARGV_SUMMARY])
    except ToolError as exc:
        log.note(f"vulkan: {exc}")
        return []
    # vulkaninfo exits non-zero when one ICD fails yet still lists the others: trust the list.
    devices = parse_vulkan_summary(output.stdout)
    if not any(d.is_gpu for d in devices):
        log.note(
            "vulkan: `vulkaninfo --summary` listed no GPU "
            f"(exit {output.returncode}: {last_words(output)})"
        )
    return devices


def vulkan_label(devices: list[VulkanDevice]) -> str | None:
    """One "driver version" per distinct GPU driver, "; "-joined; None without a GPU."""
    labels = list(dict.fromkeys(d.driver for d in devices if d.is_gpu))
    return "; ".join(labels) or None
