"""`detect_host_facts`: the box's fingerprint, from sysfs/procfs and the tools it has.

Example::

    facts = detect_host_facts(
        binaries={"llama-bench/vulkan": Path("/opt/llama.cpp/bin/llama-bench")},
        models={"glm-4.7-flash:q4_k_m": Path("/models/GLM-4.7-Flash-Q4_K_M.gguf")},
        cache_dir=orch_home() / "facts",
    )

Every source is optional: what cannot be read is None/empty with a note, never an exception.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from jobs.facts import GpuFacts, HostFacts
from worker.facts._common import FactLog
from worker.facts.acpi import read_platform_profile
from worker.facts.cpu import read_cpu
from worker.facts.engines import engine_versions
from worker.facts.gpu import DrmCard, carve_out_label, read_drm_cards
from worker.facts.memory import read_ram_bytes, read_ttm_pages_limit
from worker.facts.models import hash_models
from worker.facts.nvidia import NvidiaGpu, probe_nvidia
from worker.facts.other_platforms import detect_other_platform
from worker.facts.pciids import lookup_pci_name, read_pci_ids
from worker.facts.rocm import detect_rocm
from worker.facts.ryzenadj import probe_ryzenadj
from worker.facts.system import read_system
from worker.facts.tools import Run, Tools, Which, run_tool
from worker.facts.vulkan import VulkanDevice, probe_vulkan, vulkan_label
from worker.platform import current_platform
from worker.sysfs import read_text


def _utc_now() -> datetime:
    return datetime.now(UTC)


def detect_host_facts(
    root: Path = Path("/"),
    *,
    binaries: dict[str, Path],
    models: dict[str, Path],
    cache_dir: Path,
    which: Which = shutil.which,
    run: Run = run_tool,
    now: Callable[[], datetime] = _utc_now,
    sys_platform: str | None = None,
) -> HostFacts:
    """Detect this box's facts. `root` (a fixture tree in tests) prefixes every file read;
    `which`/`run` find and run tools (fakes in tests), `cache_dir` holds the model-hash cache.
    On Windows and macOS (or the `sys_platform` named) their own readers run instead."""
    tools = Tools(which=which, run=run)
    platform = current_platform(sys_platform)
    if platform in ("windows", "macos"):
        return detect_other_platform(
            platform, tools, binaries=binaries, models=models, cache_dir=cache_dir, now=now
        )
    log = FactLog()
    system = read_system(root, log)
    cpu = read_cpu(root, log)
    cards = read_drm_cards(root, log)
    vulkan = probe_vulkan(tools, log)
    nvidia = probe_nvidia(tools, log)
    gpus = _gpus(root, cards, vulkan, nvidia, cpu.model)
    if not gpus:
        log.note("gpus: no GPU card in /sys/class/drm and none listed by nvidia-smi")
    primary = _carve_out_card(cards, gpus, log)
    profile = read_platform_profile(root, log)
    ryzenadj = probe_ryzenadj(tools, log)
    return HostFacts(
        hostname=system.hostname,
        os=system.os,
        kernel=system.kernel,
        cpu_model=cpu.model,
        cpu_cores=cpu.cores,
        cpu_threads=cpu.threads,
        ram_bytes=read_ram_bytes(root, log),
        gpus=gpus,
        vram_split=_vram_split(primary, log),
        gtt_bytes=_gtt_bytes(primary, log),
        ttm_pages_limit=read_ttm_pages_limit(root, log),
        power_cap_w=_power_cap_w(primary, cards, nvidia, log),
        ryzenadj=ryzenadj,
        platform_profile=profile.current,
        platform_profile_choices=profile.choices,
        vulkan=_vulkan(vulkan, log),
        rocm_version=detect_rocm(root, tools, log),
        nvidia=_nvidia_driver(nvidia, log),
        engines=engine_versions(binaries, tools, log),
        models=hash_models(models, cache_dir, log),
        detected_at=now(),
        sources=log.sources,
        notes=log.notes,
    )


def _gpus(
    root: Path,
    cards: list[DrmCard],
    vulkan: list[VulkanDevice],
    nvidia: list[NvidiaGpu],
    cpu_model: str | None,
) -> list[GpuFacts]:
    """One GpuFacts per DRM card, then NVIDIA GPUs that only nvidia-smi lists."""
    pci_ids = read_pci_ids(root)
    by_slot = {gpu.pci_slot: gpu for gpu in nvidia}
    gpus: list[GpuFacts] = []
    for card in cards:
        nv = by_slot.pop(card.pci_slot or "", None)
        vk = _vulkan_device(vulkan, card.pci_id)
        is_apu = card.is_apu if card.is_apu is not None else _integrated(vk)
        names = [
            card.product_name,
            nv.name if nv else None,
            _apu_name(cpu_model) if is_apu and card.driver == "amdgpu" else None,
            vk.device_name if vk else None,
            lookup_pci_name(pci_ids, card.pci_id) if pci_ids and card.pci_id else None,
        ]
        gpus.append(
            GpuFacts(
                name=next((n for n in names if n), f"PCI {card.pci_id or card.pci_slot}"),
                driver=card.driver,
                card=card.card,
                pci_id=card.pci_id,
                pci_slot=card.pci_slot,
                vram_total_bytes=nv.memory_total_bytes if nv else card.vram_total_bytes,
                gtt_total_bytes=card.gtt_total_bytes,
                vis_vram_total_bytes=card.vis_vram_total_bytes,
                is_apu=is_apu,
            )
        )
    for nv in by_slot.values():  # nvidia-drm not loaded: no DRM card, but a real GPU
        pci_id = _pci_id_of_slot(root, nv.pci_slot)
        gpus.append(
            GpuFacts(
                name=nv.name,
                driver="nvidia",
                pci_id=pci_id,
                pci_slot=nv.pci_slot,
                vram_total_bytes=nv.memory_total_bytes,
                is_apu=_integrated(_vulkan_device(vulkan, pci_id)),
            )
        )
    return gpus


def _vulkan_device(devices: list[VulkanDevice], pci_id: str | None) -> VulkanDevice | None:
    return next((d for d in devices if pci_id and d.pci_id == pci_id and d.is_gpu), None)


def _integrated(device: VulkanDevice | None) -> bool | None:
    return device.is_integrated if device else None


def _apu_name(cpu_model: str | None) -> str | None:
    """AMD names the iGPU in the CPU's name: "AMD RYZEN AI MAX+ 395 w/ Radeon 8060S"."""
    if cpu_model and " w/ " in cpu_model:
        return cpu_model.split(" w/ ", 1)[1].strip() or None
    return None


def _pci_id_of_slot(root: Path, slot: str) -> str | None:
    device = root / "sys/bus/pci/devices" / slot
    vendor, product = read_text(device / "vendor"), read_text(device / "device")
    if vendor is None or product is None:
        return None
    try:
        return f"{int(vendor.strip(), 16):04x}:{int(product.strip(), 16):04x}"
    except ValueError:
        return None


def _carve_out_card(cards: list[DrmCard], gpus: list[GpuFacts], log: FactLog) -> DrmCard | None:
    """The first amdgpu card that is not known to be discrete: its VRAM is the carve-out."""
    amd = [(card, gpu) for card, gpu in zip(cards, gpus, strict=False) if card.driver == "amdgpu"]
    for card, gpu in amd:
        if gpu.is_apu is False:
            continue
        if gpu.is_apu is None:
            log.note(
                f"vram_split: could not tell whether {card.card} is integrated; "
                "its VRAM size was taken as the BIOS carve-out"
            )
        return card
    if amd:
        log.note("vram_split: every amdgpu card is discrete; a carve-out exists only on APUs")
    else:
        log.note("vram_split: no amdgpu card, so no BIOS carve-out to read")
    return None


def _vram_split(card: DrmCard | None, log: FactLog) -> str | None:
    if card is None or card.vram_total_bytes is None or card.vram_source is None:
        return None
    log.source("vram_split", card.vram_source)
    return carve_out_label(card.vram_total_bytes)


def _gtt_bytes(card: DrmCard | None, log: FactLog) -> int | None:
    if card is None:
        log.note("gtt_bytes: no amdgpu APU, so no GTT pool to read")
        return None
    if card.gtt_source is None:
        log.note(f"gtt_bytes: {card.card} has no readable mem_info_gtt_total")
        return None
    log.source("gtt_bytes", card.gtt_source)
    return card.gtt_total_bytes


def _power_cap_w(
    primary: DrmCard | None, cards: list[DrmCard], nvidia: list[NvidiaGpu], log: FactLog
) -> float | None:
    """On an APU box, the APU's hwmon power1_cap only: a discrete card's cap beside it is not
    the box's limit. Otherwise the first GPU's power1_cap, else nvidia-smi's power.limit."""
    for card in [primary] if primary else cards:
        if card.power_cap_w is not None and card.power_cap_source is not None:
            log.source("power_cap_w", card.power_cap_source)
            return card.power_cap_w
    for gpu in [] if primary else nvidia:
        if gpu.power_limit_w is not None:
            log.source("power_cap_w", f"nvidia-smi power.limit of {gpu.pci_slot}")
            return gpu.power_limit_w
    if primary is not None:
        log.note(
            f"power_cap_w: {primary.card} has no hwmon power1_cap (amdgpu hides it on most "
            "APUs); ryzenadj's STAPM LIMIT is the APU's limit when it can be read"
        )
    else:
        log.note("power_cap_w: no GPU exposes a power cap (hwmon power1_cap or nvidia-smi)")
    return None


def _vulkan(devices: list[VulkanDevice], log: FactLog) -> str | None:
    label = vulkan_label(devices)
    if label is not None:
        log.source("vulkan", "vulkaninfo --summary")
    return label


def _nvidia_driver(nvidia: list[NvidiaGpu], log: FactLog) -> str | None:
    version = next((gpu.driver_version for gpu in nvidia if gpu.driver_version), None)
    if version is not None:
        log.source("nvidia", "nvidia-smi --query-gpu=driver_version")
    return version
