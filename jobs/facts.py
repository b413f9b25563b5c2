"""What a test box *is*, as detected on the box itself: its fingerprint.

Every result carries one, so a report can tell a 512M carve-out from a 32G one even when the
owner's declared facts were wrong. A fact that could not be read is None (or empty) and
`notes` says why; detection never fails a job.

`sources` names where each host-level fact came from, written as the path or command on the
box (e.g. ``"vram_split": "/sys/class/drm/card1/device/mem_info_vram_total = 536870912"``), so
a refusal can quote the evidence.
"""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# Version of the HostFacts shape. Bump on any change a reader must know about, and note it here.
# History:
#   1 - first version: CPU, RAM, DRM GPUs, carve-out, GTT, power cap, ryzenadj, platform
#       profile, Vulkan/ROCm/NVIDIA driver versions, engine versions, model sha256, sources.
#   2 - ttm_pages_limit.
FACTS_VERSION = 2


class GpuFacts(BaseModel):
    """One GPU as the kernel (and, for NVIDIA, nvidia-smi) lists it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    driver: str | None = None  # kernel driver: amdgpu, nvidia, i915, xe...
    card: str | None = None  # DRM card name ("card1"); None when only nvidia-smi saw it
    pci_id: str | None = None  # "1002:1586" (vendor:device)
    pci_slot: str | None = None  # "0000:c5:00.0"
    vram_total_bytes: int | None = Field(default=None, ge=0)
    gtt_total_bytes: int | None = Field(default=None, ge=0)
    vis_vram_total_bytes: int | None = Field(default=None, ge=0)
    # True: integrated (shares system RAM), False: discrete, None: no source said.
    is_apu: bool | None = None


class HostFacts(BaseModel):
    """The detected fingerprint of one box."""

    model_config = ConfigDict(extra="forbid")

    facts_version: int = FACTS_VERSION
    hostname: str | None = None
    os: str | None = None  # PRETTY_NAME from /etc/os-release
    kernel: str | None = None
    cpu_model: str | None = None
    cpu_cores: int | None = Field(default=None, ge=1)
    cpu_threads: int | None = Field(default=None, ge=1)
    ram_bytes: int | None = Field(default=None, ge=0)  # MemTotal: excludes the carve-out
    gpus: list[GpuFacts] = Field(default_factory=list)
    # The BIOS carve-out ("512M", "32G") of the integrated AMD GPU, normalized like
    # jobs.spec.normalize_vram_split; None without an amdgpu APU.
    vram_split: str | None = None
    gtt_bytes: int | None = Field(default=None, ge=0)
    # /sys/module/ttm/parameters/pages_limit (4 KiB pages the GPU may map, ttm.pages_limit)
    ttm_pages_limit: int | None = Field(default=None, ge=0)
    power_cap_w: float | None = Field(default=None, ge=0)  # hwmon power1_cap or nvidia-smi
    ryzenadj: dict[str, float] = Field(default_factory=dict)  # "STAPM LIMIT" -> W (as printed)
    platform_profile: str | None = None
    platform_profile_choices: list[str] = Field(default_factory=list)
    vulkan: str | None = None  # "radv Mesa 25.0.7-0ubuntu0.25.04.1" per Vulkan GPU, "; "-joined
    rocm_version: str | None = None
    nvidia: str | None = None  # NVIDIA driver version
    engines: dict[str, str] = Field(default_factory=dict)  # binary path -> version line
    models: dict[str, str] = Field(default_factory=dict)  # model name -> sha256 hex
    detected_at: AwareDatetime
    sources: dict[str, str] = Field(default_factory=dict)  # fact -> "path = raw" or command
    notes: list[str] = Field(default_factory=list)  # what could not be read, and why
