"""Each fixture tree gives exactly the HostFacts a box of that kind should report."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from facts_fakes import FIXTURES, FakeTools, box_root

from jobs.facts import FACTS_VERSION, GpuFacts, HostFacts
from worker.facts import detect_host_facts

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LLAMA_BENCH = Path("/opt/llama.cpp-vulkan/bin/llama-bench")

NO_NVIDIA = "nvidia: nvidia-smi not on PATH (no NVIDIA driver)"
NO_VULKAN = "vulkan: vulkaninfo not on PATH (install vulkan-tools to record the driver)"
NO_RYZENADJ = "ryzenadj: not on PATH (no STAPM/PPT limits; only Ryzen APUs have them)"
NO_PROFILE = (
    "platform_profile: /sys/firmware/acpi/platform_profile is missing or unreadable "
    "(no ACPI platform-profile driver on this box)"
)
NO_AMDGPU = "vram_split: no amdgpu card, so no BIOS carve-out to read"
NO_GTT = "gtt_bytes: no amdgpu APU, so no GTT pool to read"
NO_TTM = "ttm_pages_limit: /sys/module/ttm/parameters/pages_limit is missing or unreadable (ttm not loaded)"  # noqa: E501
NO_ROCM = "rocm_version: no /opt/rocm/.info/version and rocminfo is not on PATH"


def detect(box: str, tmp_path: Path, **kwargs: object) -> tuple[HostFacts, FakeTools]:
    tools = FakeTools(FIXTURES / box / "tools")
    options: dict[str, object] = {"binaries": {}, "models": {}} | kwargs
    facts = detect_host_facts(
        box_root(box),
        cache_dir=tmp_path / "cache",
        which=tools.which,
        run=tools.run,
        now=lambda: NOW,
        **options,  # type: ignore[arg-type]
    )
    return facts, tools


def test_strix_halo_apu_with_512m_carve_out(tmp_path: Path) -> None:
    model = tmp_path / "glm-4.7-flash-q4_k_m.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    facts, tools = detect(
        "strix-halo",
        tmp_path,
        binaries={"llama-bench/vulkan": LLAMA_BENCH},
        models={"glm-4.7-flash:q4_k_m": model},
    )
    assert facts == HostFacts(
        facts_version=FACTS_VERSION,
        hostname="halo-box",
        os="Ubuntu 24.04.3 LTS",
        kernel="6.14.0-29-generic",
        cpu_model="AMD RYZEN AI MAX+ 395 w/ Radeon 8060S",
        cpu_cores=16,
        cpu_threads=32,
        ram_bytes=131891232 * 1024,
        gpus=[
            GpuFacts(
                name="Radeon 8060S",  # from the CPU's name: pci.ids lists 8040S/8050S/8060S
                driver="amdgpu",
                card="card1",
                pci_id="1002:1586",
                pci_slot="0000:c5:00.0",
                vram_total_bytes=536870912,
                gtt_total_bytes=113246208000,
                vis_vram_total_bytes=536870912,
                is_apu=True,
            )
        ],
        vram_split="512M",
        gtt_bytes=113246208000,
        ttm_pages_limit=27648000,
        power_cap_w=None,  # amdgpu hides power1_cap on this APU; ryzenadj has the limits
        ryzenadj={  # settings only: the VALUE rows are readings that change every call
            "STAPM LIMIT": 120.0,
            "PPT LIMIT FAST": 140.0,
            "PPT LIMIT SLOW": 120.0,
            "TDC LIMIT VDD": 160.0,
            "TDC LIMIT SOC": 55.0,
            "EDC LIMIT VDD": 240.0,
            "EDC LIMIT SOC": 0.0,
            "THM LIMIT CORE": 100.0,
        },
        platform_profile="performance",
        platform_profile_choices=["low-power", "balanced", "performance"],
        vulkan="radv Mesa 25.0.7-0ubuntu0.24.04.2",  # llvmpipe is not listed
        rocm_version="6.4.1-83",
        nvidia=None,
        engines={str(LLAMA_BENCH): "version: 6134 (de2192b8)"},
        models={"glm-4.7-flash:q4_k_m": hashlib.sha256(model.read_bytes()).hexdigest()},
        detected_at=NOW,
        sources={
            "platform_profile": "/sys/firmware/acpi/platform_profile = performance",
            "ryzenadj": "ryzenadj -i: STAPM LIMIT = 120.000",
            "vram_split": "/sys/class/drm/card1/device/mem_info_vram_total = 536870912",
            "gtt_bytes": "/sys/class/drm/card1/device/mem_info_gtt_total = 113246208000",
            "ttm_pages_limit": "/sys/module/ttm/parameters/pages_limit = 27648000",
            "vulkan": "vulkaninfo --summary",
            "rocm_version": "/opt/rocm/.info/version = 6.4.1-83",
        },
        notes=[
            NO_NVIDIA,
            "power_cap_w: card1 has no hwmon power1_cap (amdgpu hides it on most APUs); "
            "ryzenadj's STAPM LIMIT is the APU's limit when it can be read",
        ],
    )
    # /opt/rocm/.info/version answered, so rocminfo was never run.
    assert sorted(Path(call[0]).name for call in tools.calls) == [
        "llama-bench",
        "ryzenadj",
        "vulkaninfo",
    ]


def test_no_gpu_arm_vm_says_why_each_fact_is_missing(tmp_path: Path) -> None:
    facts, tools = detect("no-gpu", tmp_path)
    assert facts == HostFacts(
        hostname="cpu-only-arm",
        os="Debian GNU/Linux 12 (bookworm)",
        kernel="6.1.0-37-cloud-arm64",
        cpu_model=None,  # arm64 cpuinfo has no "model name"
        cpu_cores=4,  # from /sys/devices/system/cpu/cpuN/topology/core_id
        cpu_threads=4,
        ram_bytes=24538272 * 1024,
        detected_at=NOW,
        notes=[
            "cpu_model: /proc/cpuinfo has no 'model name' line (not an x86 kernel?)",
            "gpus: /sys/class/drm does not exist (no DRM graphics driver loaded)",
            NO_VULKAN,
            NO_NVIDIA,
            "gpus: no GPU card in /sys/class/drm and none listed by nvidia-smi",
            NO_AMDGPU,
            NO_PROFILE,
            NO_RYZENADJ,
            NO_GTT,
            NO_TTM,
            "power_cap_w: no GPU exposes a power cap (hwmon power1_cap or nvidia-smi)",
            NO_ROCM,
        ],
    )
    assert tools.calls == []


def test_nvidia_box_without_drm_cards_uses_nvidia_smi(tmp_path: Path) -> None:
    facts, _ = detect("nvidia", tmp_path)
    rtx6000 = GpuFacts(
        name="NVIDIA RTX 6000 Ada Generation",
        driver="nvidia",
        card=None,  # nvidia-drm is not loaded: only nvidia-smi sees them
        pci_id="10de:26b1",  # from /sys/bus/pci/devices/<slot>/{vendor,device}
        vram_total_bytes=49140 * 1024**2,
        is_apu=False,  # Vulkan: PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
    )
    assert facts == HostFacts(
        hostname="ws-ada2",
        os="Rocky Linux 9.5 (Blue Onyx)",
        kernel="5.14.0-503.14.1.el9_5.x86_64",
        cpu_model="Intel(R) Xeon(R) w5-3435X",
        cpu_cores=16,
        cpu_threads=32,
        ram_bytes=263617540 * 1024,
        gpus=[
            rtx6000.model_copy(update={"pci_slot": "0000:17:00.0"}),
            rtx6000.model_copy(update={"pci_slot": "0000:b5:00.0"}),
        ],
        power_cap_w=300.0,
        vulkan="NVIDIA 570.133.07",
        nvidia="570.133.07",
        detected_at=NOW,
        sources={
            "power_cap_w": "nvidia-smi power.limit of 0000:17:00.0",
            "vulkan": "vulkaninfo --summary",
            "nvidia": "nvidia-smi --query-gpu=driver_version",
        },
        notes=[
            "gpus: card0 (ast) is a display-only adapter: skipped",  # the BMC's VGA
            NO_AMDGPU,
            NO_PROFILE,
            NO_RYZENADJ,
            NO_GTT,
            NO_TTM,
            NO_ROCM,
        ],
    )


def test_discrete_radeon_is_not_a_carve_out(tmp_path: Path) -> None:
    facts, _ = detect("radeon-dgpu", tmp_path)
    assert facts == HostFacts(
        hostname="xtx-desk",
        os="Fedora Linux 42 (Workstation Edition)",  # only /usr/lib/os-release exists
        kernel="6.15.9-201.fc42.x86_64",
        cpu_model="AMD Ryzen 9 7950X 16-Core Processor",
        cpu_cores=16,
        cpu_threads=32,
        ram_bytes=65028144 * 1024,
        gpus=[
            GpuFacts(
                # No vulkaninfo and an empty product_name: the pci.ids name.
                name="Navi 31 [Radeon RX 7900 XT/7900 XTX/7900 GRE/7900M]",
                driver="amdgpu",
                card="card0",
                pci_id="1002:744c",  # uevent writes "1002:744C"
                pci_slot="0000:03:00.0",
                vram_total_bytes=25753026560,
                gtt_total_bytes=33294409728,
                vis_vram_total_bytes=25753026560,
                is_apu=False,  # hwmon freq2_label is "mclk"
            )
        ],
        power_cap_w=339.0,
        rocm_version="HSA runtime 1.14",
        detected_at=NOW,
        sources={
            "power_cap_w": "/sys/class/drm/card0/device/hwmon/hwmon2/power1_cap = 339000000",
            "rocm_version": "/usr/bin/rocminfo: Runtime Version: 1.14",
        },
        notes=[
            NO_VULKAN,
            NO_NVIDIA,
            "vram_split: every amdgpu card is discrete; a carve-out exists only on APUs",
            NO_PROFILE,
            NO_RYZENADJ,
            NO_GTT,
            NO_TTM,
            "rocm_version: no /opt/rocm/.info/version (a distribution build?); "
            "recorded rocminfo's HSA runtime version instead of the ROCm release",
        ],
    )


@pytest.mark.parametrize("box", ["strix-halo", "no-gpu", "nvidia", "radeon-dgpu"])
def test_facts_survive_json(box: str, tmp_path: Path) -> None:
    """What crosses to the coordinator must come back equal (extra="forbid" both ways)."""
    facts, _ = detect(box, tmp_path)
    assert HostFacts.model_validate_json(facts.model_dump_json()) == facts


def test_apu_with_a_discrete_radeon_beside_it(tmp_path: Path) -> None:
    """card0 is a 7900 XTX, card1 the Strix Halo iGPU: the carve-out and the box's power limit
    are the APU's, not those of the first amdgpu card."""
    root = tmp_path / "root"
    shutil.copytree(box_root("strix-halo"), root)
    shutil.copytree(box_root("radeon-dgpu") / "sys/class/drm/card0", root / "sys/class/drm/card0")
    tools = FakeTools(FIXTURES / "strix-halo" / "tools")
    facts = detect_host_facts(
        root, binaries={}, models={}, cache_dir=tmp_path, which=tools.which, run=tools.run
    )
    assert [(g.card, g.is_apu) for g in facts.gpus] == [("card0", False), ("card1", True)]
    assert facts.vram_split == "512M"
    assert facts.sources["vram_split"].startswith("/sys/class/drm/card1/")
    assert facts.power_cap_w is None  # the XTX's 339 W power1_cap is not the box's limit
