"""Host facts on Windows and macOS from recorded command output (tests/fixtures/windows and
tests/fixtures/macos; their READMEs name the documented formats). The platform dispatch in
detect_host_facts is what a Windows or macOS box runs; the commands are replayed, never run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from worker.facts import detect_host_facts
from worker.facts.macos import PROFILER_ARGV, SW_VERS_ARGV, SYSCTL_ARGV
from worker.facts.tools import ToolError, ToolOutput
from worker.facts.windows import POWERCFG_ARGV, POWERSHELL_ARGV, parse_power_scheme

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
WINDOWS = {
    POWERSHELL_ARGV: FIXTURES / "windows" / "facts_powershell.json",
    POWERCFG_ARGV: FIXTURES / "windows" / "powercfg_getactivescheme.txt",
}
MACOS = {
    SYSCTL_ARGV: FIXTURES / "macos" / "sysctl.txt",
    SW_VERS_ARGV: FIXTURES / "macos" / "sw_vers.txt",
    PROFILER_ARGV: FIXTURES / "macos" / "system_profiler_displays.json",
}


def _replay(outputs: dict[tuple[str, ...], Path]):  # type: ignore[no-untyped-def]
    calls: list[tuple[str, ...]] = []

    def run(argv: Sequence[str], timeout_s: float) -> ToolOutput:
        calls.append(tuple(argv))
        path = outputs.get(tuple(argv))
        if path is None:
            raise ToolError(f"`{argv[0]}` cannot be run: No such file or directory")
        return ToolOutput(0, path.read_text(encoding="utf-8"), "")

    return run, calls


def _detect(sys_platform: str, outputs: dict[tuple[str, ...], Path], tmp_path: Path):  # type: ignore[no-untyped-def]
    run, calls = _replay(outputs)
    facts = detect_host_facts(
        tmp_path / "no-such-root",  # nothing under / is read on these platforms
        binaries={}, models={}, cache_dir=tmp_path, which=lambda _n: None, run=run,
        now=lambda: datetime(2025, 4, 18, tzinfo=UTC), sys_platform=sys_platform,
    )  # fmt: skip
    return facts, calls


def test_windows_facts(tmp_path: Path) -> None:
    facts, calls = _detect("win32", WINDOWS, tmp_path)
    assert set(calls) == set(WINDOWS)
    assert facts.hostname == "STRIX-LAPTOP"
    assert facts.os == "Microsoft Windows 11 Pro" and facts.kernel == "10.0.26100"
    assert facts.cpu_model == "AMD RYZEN AI MAX+ 395 w/ Radeon 8060S"
    assert (facts.cpu_cores, facts.cpu_threads) == (16, 32)
    assert facts.ram_bytes == 136365211648 - 536870912
    # The Basic Display Adapter is not a GPU; AdapterRAM's 4 GiB cap is not taken for VRAM.
    [gpu] = facts.gpus
    assert gpu.name == "AMD Radeon(TM) 8060S Graphics" and gpu.pci_id == "1002:1586"
    assert gpu.vram_total_bytes == 536870912 and gpu.is_apu is True
    assert gpu.driver == "32.0.12033.1030"
    assert facts.vram_split == "512M"  # the carve-out, as on Linux
    assert facts.platform_profile == "Balanced"
    assert "registry" in facts.sources["vram_split"]


def test_macos_facts(tmp_path: Path) -> None:
    facts, calls = _detect("darwin", MACOS, tmp_path)
    assert set(calls) == set(MACOS)
    assert facts.os == "macOS 14.4.1 (23E224)" and facts.kernel == "23.4.0"
    assert facts.cpu_model == "Apple M1 Max" and facts.ram_bytes == 64 * 2**30
    assert [g.name for g in facts.gpus] == ["Apple M1 Max (32-core GPU)"]
    assert facts.gpus[0].is_apu is True and facts.vram_split is None
    assert any("unified memory" in note for note in facts.notes)


@pytest.mark.parametrize("sys_platform", ["win32", "darwin"])
def test_missing_tools_give_notes_not_errors(sys_platform: str, tmp_path: Path) -> None:
    facts, _ = _detect(sys_platform, {}, tmp_path)
    assert facts.hostname is None and facts.gpus == [] and facts.notes


def test_garbage_output_gives_notes(tmp_path: Path) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_text("\x00{not json" * 1000)
    facts, _ = _detect("win32", {POWERSHELL_ARGV: junk, POWERCFG_ARGV: junk}, tmp_path)
    assert facts.os is None and facts.platform_profile is None
    assert any("no JSON" in note for note in facts.notes)


def test_power_scheme_line() -> None:
    text = "Power Scheme GUID: 961cc777-2547-4f9d-8174-7d86181b8a7a  (Best Performance)\r\n"
    assert parse_power_scheme(text) == "Best Performance"
    assert parse_power_scheme("Access denied.") is None
