"""Declared facts against detected ones: one sentence per contradiction, naming the evidence."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from facts_fakes import FIXTURES, FakeTools, box_root

from jobs.facts import GpuFacts, HostFacts
from jobs.spec import vram_split_bytes
from worker.config import DeclaredFacts
from worker.facts import conflicts, detect_host_facts
from worker.facts.conflicts import power_tolerance_w
from worker.facts.gpu import carve_out_label


def facts_of(box: str, tmp_path: Path) -> HostFacts:
    tools = FakeTools(FIXTURES / box / "tools")
    return detect_host_facts(
        box_root(box),
        binaries={},
        models={},
        cache_dir=tmp_path,
        which=tools.which,
        run=tools.run,
    )


def test_declared_32g_on_a_512m_box_is_refused_with_the_evidence(tmp_path: Path) -> None:
    facts = facts_of("strix-halo", tmp_path)
    # The shape the agent passes: WorkerConfig.declared_facts() (normalized "32g" -> "32G").
    declared = DeclaredFacts(vram_split="32g").model_dump(exclude_none=True)
    assert conflicts(declared, facts) == [
        "declared vram_split 32G but this box has a 512M carve-out "
        "(/sys/class/drm/card1/device/mem_info_vram_total = 536870912)"
    ]


@pytest.mark.parametrize("declared", ["512M", "512m", "512 MiB"])
def test_matching_carve_out_is_no_conflict(declared: str, tmp_path: Path) -> None:
    assert conflicts({"vram_split": declared}, facts_of("strix-halo", tmp_path)) == []


def test_same_size_in_other_units_is_no_conflict() -> None:
    facts = HostFacts(vram_split="1G", detected_at=datetime.now(UTC))
    assert conflicts({"vram_split": "1024M"}, facts) == []


@pytest.mark.parametrize(
    ("size_bytes", "label"),
    [
        (536870912, "512M"),
        (532676608, "512M"),  # a driver reporting 508 MiB still names the 512M setting
        (268435456, "256M"),
        (1040187392, "1G"),  # 992 MiB
        (1073741824, "1G"),
        (34359738368, "32G"),
        (51539607552, "48G"),
        (103079215104, "96G"),
    ],
)
def test_carve_out_label_uses_bios_sizes(size_bytes: int, label: str) -> None:
    assert carve_out_label(size_bytes) == label
    assert abs(vram_split_bytes(label) - size_bytes) < 64 * 1024**2


def test_power_limit_from_ryzenadj_on_an_apu(tmp_path: Path) -> None:
    facts = facts_of("strix-halo", tmp_path)  # STAPM LIMIT 120 W, no hwmon power1_cap
    assert conflicts({"power_limit_w": 80}, facts) == [
        "declared power_limit_w 80 but this box's power limit is 120 W "
        "(ryzenadj -i: STAPM LIMIT = 120.000; tolerance 4 W)"
    ]
    assert conflicts({"power_limit_w": 120}, facts) == []


def test_power_limit_from_hwmon_power1_cap(tmp_path: Path) -> None:
    facts = facts_of("radeon-dgpu", tmp_path)  # power1_cap = 339000000 uW
    assert conflicts({"power_limit_w": 300}, facts) == [
        "declared power_limit_w 300 but this box's power limit is 339 W "
        "(/sys/class/drm/card0/device/hwmon/hwmon2/power1_cap = 339000000; tolerance 15 W)"
    ]


@pytest.mark.parametrize(("declared", "agrees"), [(115.0, True), (113.0, False), (126.0, True)])
def test_power_tolerance_is_five_percent_or_two_watts(declared: float, agrees: bool) -> None:
    facts = HostFacts(power_cap_w=120.0, detected_at=datetime.now(UTC))
    assert (conflicts({"power_limit_w": declared}, facts) == []) is agrees
    assert power_tolerance_w(10.0) == 2.0  # small limits: the 2 W floor


def test_platform_profile_mismatch(tmp_path: Path) -> None:
    facts = facts_of("strix-halo", tmp_path)
    assert conflicts({"platform_profile": "balanced"}, facts) == [
        "declared platform_profile balanced but the box runs in performance "
        "(/sys/firmware/acpi/platform_profile = performance)"
    ]


def test_nothing_detected_is_no_conflict_but_a_note(tmp_path: Path) -> None:
    facts = facts_of("no-gpu", tmp_path)
    # (a declared vram_split is refused here: this box has no APU to carve memory out for,
    # see test_a_declared_carve_out_on_a_box_that_cannot_have_one_is_refused)
    declared = {
        "power_limit_w": 80,
        "platform_profile": "performance",
        "form_factor": "laptop",  # never detected: never a conflict
    }
    assert conflicts(declared, facts) == []
    for fact in ("vram_split", "power_cap_w", "platform_profile", "ryzenadj"):
        assert any(note.startswith(f"{fact}:") for note in facts.notes), fact


def test_unreadable_declared_values_are_named() -> None:
    facts = HostFacts(vram_split="512M", power_cap_w=80.0, detected_at=datetime.now(UTC))
    assert conflicts({"vram_split": "lots", "power_limit_w": "eighty"}, facts) == [
        "declared vram_split 'lots' is not a VRAM size such as 512M or 32G",
        "declared power_limit_w 'eighty' is not a number of watts",
    ]


def test_a_declared_ttm_pages_limit_the_kernel_did_not_boot_with_is_refused(
    tmp_path: Path,
) -> None:
    facts = facts_of("strix-halo", tmp_path)
    declared = DeclaredFacts(ttm_pages_limit=16469033).model_dump(exclude_none=True)
    assert conflicts(declared, facts) == [
        "declared ttm_pages_limit 16469033 but this box boots with 27648000 "
        "(/sys/module/ttm/parameters/pages_limit = 27648000)"
    ]
    assert conflicts({"ttm_pages_limit": 27648000}, facts) == []


@pytest.mark.parametrize(
    ("box", "gpus"),
    [
        ("no-gpu", "GPUs detected: none"),
        ("nvidia", "(nvidia"),
        ("radeon-dgpu", "(amdgpu, discrete)"),
    ],
)
def test_a_declared_carve_out_on_a_box_that_cannot_have_one_is_refused(
    box: str, gpus: str, tmp_path: Path
) -> None:
    facts = facts_of(box, tmp_path)
    [problem] = conflicts({"vram_split": "32G"}, facts)
    assert problem.startswith(
        "declared vram_split 32G but this box has no integrated AMD GPU (APU) that could "
        "have a BIOS carve-out"
    )
    assert gpus in problem


def test_an_apu_whose_carve_out_cannot_be_read_is_not_a_conflict() -> None:
    facts = HostFacts(
        gpus=[GpuFacts(name="Radeon 8060S", driver="amdgpu", is_apu=None)],
        detected_at=datetime.now(UTC),
    )
    assert conflicts({"vram_split": "32G"}, facts) == []
