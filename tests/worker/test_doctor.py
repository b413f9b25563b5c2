"""`orch doctor` on this very box: what it says must be what the box is (no GPU, no RAPL here
or RAPL readable, the llama.cpp build found or not), checked against the box itself and against
the sources' own probes; then what a Windows or macOS box's doctor would check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from worker.doctor import format_report, run_doctor
from worker.telemetry import get_source, platform_sources

ROOT = Path(__file__).resolve().parents[2]


def _by_name(report_json: dict[str, object]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in report_json["checks"]}  # type: ignore[attr-defined,index]


def test_doctor_tells_the_truth_about_this_box() -> None:
    report = run_doctor()
    checks = _by_name(report.to_json())
    # Telemetry: the same answer as each source's own probe, and only this platform's probed.
    for name in platform_sources():
        source = get_source(name)
        status = source.probe()
        source.close()
        assert checks[name]["state"] == ("ok" if status.available else "missing"), name
    assert checks["windows_gpu"]["state"] == "n/a" and checks["ioreg_gpu"]["state"] == "n/a"
    # RAPL: present and readable, present and root-only, or absent, as the box says.
    rapl = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
    if not rapl.exists():
        assert checks["rapl"]["state"] == "missing"
    elif not os.access(rapl, os.R_OK):
        assert "not readable by this user" in checks["rapl"]["detail"]
    # No GPU driver here means neither amdgpu nor DRM clients can be read.
    if not Path("/sys/class/drm").is_dir():
        assert checks["amdgpu"]["state"] == "missing" and checks["drm_fdinfo"]["state"] == "missing"
    assert checks["psutil"]["state"] == "ok"
    # Setters: the ACPI platform profile is there and writable, or the doctor says why not.
    profile = Path("/sys/firmware/acpi/platform_profile")
    expected = "ok" if profile.exists() and os.access(profile, os.W_OK) else "missing"
    assert checks["platform_profile"]["state"] == expected
    # Engines: on PATH or in orch's builds, with the version the binary prints.
    for engine in ("lms", "ollama"):
        assert (checks[engine]["state"] == "ok") == (shutil.which(engine) is not None)
    text = format_report(report)
    assert text.splitlines()[0].startswith("orch doctor: linux")


def test_doctor_finds_the_llama_cpp_build(tmp_path: Path) -> None:
    """A build in a folder the doctor is told about is found and asked its version."""
    build = os.environ.get("ORCH_LLAMA_CPP_BIN")
    candidates = [Path(build)] if build else []
    candidates += sorted(Path.home().glob(".cache/orch/llama.cpp/*-cpu/bin"))
    found = [c for c in candidates if (c / "llama-bench").is_file()]
    if not found:
        fake = tmp_path / "llama-bench"
        fake.write_text("#!/bin/sh\necho 'version: 1 (abc)' >&2\n")
        fake.chmod(0o755)
        found = [tmp_path]
    checks = _by_name(run_doctor(bin_dirs=found, which=lambda _n: None).to_json())
    assert checks["llama-bench"]["state"] == "ok"
    assert "version:" in checks["llama-bench"]["detail"]


def test_doctor_json_from_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "doctor", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["platform"].startswith("linux")
    assert {c["area"] for c in data["checks"]} >= {"engine", "telemetry", "setter"}
    assert all(c["state"] in ("ok", "missing", "n/a") for c in data["checks"])


def test_what_a_windows_box_checks() -> None:
    """On Windows the PDH source is probed (here: pywin32 is missing, and it says how to get
    it), the sysfs sources are not, and the setters say they are Linux-only."""
    checks = _by_name(run_doctor(sys_platform="win32").to_json())
    assert checks["windows_gpu"]["state"] == "missing"
    assert "orch[windows]" in checks["windows_gpu"]["detail"]
    assert checks["amdgpu"]["state"] == "n/a" and checks["rapl"]["state"] == "n/a"
    assert checks["platform_profile"]["state"] == "n/a"


def test_what_a_mac_checks() -> None:
    checks = _by_name(run_doctor(sys_platform="darwin").to_json())
    assert checks["powermetrics"]["state"] == "missing"  # no powermetrics binary here
    assert checks["ioreg_gpu"]["state"] == "missing"  # ioreg does not run on Linux
    assert checks["drm_fdinfo"]["state"] == "n/a"
