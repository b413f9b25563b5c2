"""The ROCm release, when ROCm is installed.

AMD's packages write the release to `/opt/rocm/.info/version` (e.g. "6.4.1-83"). Distribution
builds (Fedora, Debian/Ubuntu `rocminfo`) have no such file, and rocminfo never prints the
release, so the fallbacks are the versioned install folder rocminfo lives in
(`/opt/rocm-6.4.1/bin/rocminfo`), then the HSA runtime version rocminfo prints
("Runtime Version:         1.18"), recorded as such.
"""

from __future__ import annotations

import re
from pathlib import Path

from worker.facts._common import FactLog, first_line, shown
from worker.facts.tools import ToolError, Tools, last_words
from worker.sysfs import read_text

VERSION_FILE = "opt/rocm/.info/version"
_INSTALL_DIR = re.compile(r"^rocm-(\d+\.\d+(?:\.\d+)?)$")
_RUNTIME = re.compile(r"^Runtime Version:\s*(\S+)", re.MULTILINE)


def parse_rocminfo_runtime(text: str) -> str | None:
    match = _RUNTIME.search(text)
    return match.group(1) if match else None


def detect_rocm(root: Path, tools: Tools, log: FactLog) -> str | None:
    version = first_line(read_text(root / VERSION_FILE))
    if version:
        log.source("rocm_version", f"{shown(root, root / VERSION_FILE)} = {version}")
        return version
    binary = tools.which("rocminfo")
    if binary is None:
        log.note("rocm_version: no /opt/rocm/.info/version and rocminfo is not on PATH")
        return None
    for part in Path(binary).resolve().parts:
        if match := _INSTALL_DIR.match(part):
            log.source("rocm_version", f"install folder of {binary}")
            return match.group(1)
    try:
        output = tools.call([binary])
    except ToolError as exc:
        log.note(f"rocm_version: {exc}")
        return None
    runtime = parse_rocminfo_runtime(output.stdout)
    if runtime is None:
        log.note(
            f"rocm_version: rocminfo printed no runtime version "
            f"(exit {output.returncode}: {last_words(output)})"
        )
        return None
    log.note(
        "rocm_version: no /opt/rocm/.info/version (a distribution build?); "
        "recorded rocminfo's HSA runtime version instead of the ROCm release"
    )
    log.source("rocm_version", f"{binary}: Runtime Version: {runtime}")
    return f"HSA runtime {runtime}"
