"""`orch doctor`: what works on this box and what does not, and why.

Each check is one line a user can act on: an engine binary found (and its version), a telemetry
source readable (or the reason it is not: "RAPL: ... not readable by this user", "powermetrics
needs root", "PDH GPU counters: not available"), a runtime setter the worker could use, the
permissions those need. Sources meant for another platform are listed as such, so the JSON a
user attaches to a bug report shows the whole picture.

Example::

    report = run_doctor()
    print(format_report(report))        # or json.dumps(report.to_json())
"""

from __future__ import annotations

import os
import platform as platform_module
import shutil
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from worker.facts._common import shown
from worker.facts.engines import version_line
from worker.facts.tools import Run, ToolError, Tools, Which, last_words, run_tool
from worker.platform import current_platform

State = Literal["ok", "missing", "n/a"]
# (binary, argv after it that prints the version); names without ".exe": `which` adds it.
ENGINES = (
    ("llama-bench", ("--version",)),
    ("llama-server", ("--version",)),
    ("lms", ("version",)),
    ("ollama", ("--version",)),
)
PLATFORM_PROFILE = "sys/firmware/acpi/platform_profile"


@dataclass(frozen=True)
class Check:
    area: str  # "engine", "telemetry", "setter", "permission"
    name: str
    state: State
    detail: str


@dataclass
class DoctorReport:
    platform: str
    python: str
    checks: list[Check] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"platform": self.platform, "python": self.python,
                "checks": [asdict(check) for check in self.checks]}  # fmt: skip


def run_doctor(
    root: Path = Path("/"),
    *,
    sys_platform: str | None = None,
    which: Which = shutil.which,
    run: Run = run_tool,
    bin_dirs: Iterable[Path] = (),
) -> DoctorReport:
    """Every check, on this box (or a fixture `root` and fake `which`/`run` in tests)."""
    here = current_platform(sys_platform)
    report = DoctorReport(platform=f"{here} ({sys_platform or sys.platform})",
                          python=platform_module.python_version())  # fmt: skip
    tools = Tools(which=_which_in(which, [*bin_dirs, *_orch_bin_dirs()]), run=run)
    report.checks += engine_checks(tools)
    report.checks += telemetry_checks(root, sys_platform)
    report.checks += setter_checks(root, here, tools)
    return report


def _orch_bin_dirs() -> list[Path]:
    """Where `orch engines install` puts llama.cpp builds, and $ORCH_LLAMA_CPP_BIN."""
    from jobs.paths import orch_home

    dirs = [Path(os.environ["ORCH_LLAMA_CPP_BIN"])] if os.environ.get("ORCH_LLAMA_CPP_BIN") else []
    try:
        dirs += sorted((orch_home() / "llama.cpp").glob("*/bin"))
    except OSError:
        pass
    return dirs


def _which_in(which: Which, dirs: list[Path]) -> Which:
    def find(name: str) -> str | None:
        found = which(name)
        if found is not None:
            return found
        for folder in dirs:
            for candidate in (folder / name, folder / f"{name}.exe"):
                if candidate.is_file() and os.access(candidate, os.X_OK):
                    return str(candidate)
        return None

    return find


def engine_checks(tools: Tools) -> list[Check]:
    checks = []
    for name, argv in ENGINES:
        path = tools.which(name)
        if path is None:
            checks.append(Check("engine", name, "missing", "not on PATH nor in orch's builds"))
            continue
        try:
            done = tools.call([path, *argv])
        except ToolError as exc:
            checks.append(Check("engine", name, "missing", f"{path}: {exc}"))
            continue
        line = version_line(done.stdout, done.stderr)
        if done.returncode != 0:
            why = f"{path} {' '.join(argv)} exited {done.returncode}: {last_words(done)}"
            checks.append(Check("engine", name, "missing", why))
        else:
            checks.append(Check("engine", name, "ok", f"{path}: {line or 'no version printed'}"))
    return checks


def telemetry_checks(root: Path, sys_platform: str | None) -> list[Check]:
    """Probe every source this platform starts; list the others as meant elsewhere."""
    from worker.telemetry import get_source, platform_sources, registered_sources

    here = set(platform_sources(sys_platform))
    checks = []
    for name in registered_sources():
        source = get_source(name, root)
        if sys_platform is not None and hasattr(source, "platform"):
            source.platform = current_platform(sys_platform)  # the other-platform sources
        if name not in here:
            where = ", ".join(source.platforms)
            checks.append(Check("telemetry", name, "n/a", f"for {where} boxes"))
            continue
        try:
            status = source.probe()
        finally:
            source.close()
        state: State = "ok" if status.available else "missing"
        checks.append(Check("telemetry", name, state, status.detail or ""))
    return checks


def setter_checks(root: Path, here: str, tools: Tools) -> list[Check]:
    """Whether the runtime setters (worker/settings) could act here, as this user."""
    if here != "linux":
        why = "runtime setters are Linux-only so far (sysfs, hwmon, ryzenadj)"
        return [Check("setter", name, "n/a", why) for name in ("platform_profile", "power_limit_w")]
    checks = [_writable(root, "platform_profile", root / PLATFORM_PROFILE)]
    caps = sorted(root.glob("sys/class/drm/card*/device/hwmon/hwmon*/power1_cap"))
    if caps:
        checks.append(_writable(root, "power_limit_w (hwmon)", caps[0]))
    else:
        checks.append(Check("setter", "power_limit_w (hwmon)", "missing",
                            "no GPU hwmon power1_cap (amdgpu hides it on most APUs)"))  # fmt: skip
    ryzenadj = tools.which("ryzenadj")
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if ryzenadj is None:
        checks.append(Check("setter", "power_limit_w (command: ryzenadj)", "missing",
                            "ryzenadj is not on PATH"))  # fmt: skip
    else:
        state: State = "ok" if is_root else "missing"
        why = "" if is_root else ": needs root (it writes the SMU through /dev/mem)"
        checks.append(Check("setter", "power_limit_w (command: ryzenadj)", state, ryzenadj + why))
    return checks


def _writable(root: Path, name: str, path: Path) -> Check:
    where = shown(root, path)
    if not path.exists():
        return Check("setter", name, "missing", f"{where} does not exist")
    if not os.access(path, os.W_OK):
        return Check("permission", name, "missing", f"{where} is not writable by this user")
    return Check("setter", name, "ok", f"{where} is writable")


def format_report(report: DoctorReport) -> str:
    """Plain text: one line per check, grouped by area."""
    mark = {"ok": "ok  ", "missing": "NO  ", "n/a": "n/a "}
    lines = [f"orch doctor: {report.platform}, Python {report.python}"]
    for area in ("engine", "telemetry", "setter", "permission"):
        rows = [c for c in report.checks if c.area == area]
        if rows:
            lines.append(f"{area}:")
            lines += [f"  {mark[c.state]}{c.name}" + (f": {c.detail}" if c.detail else "")
                      for c in rows]  # fmt: skip
    return "\n".join(lines)
