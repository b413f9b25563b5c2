"""Fixture trees and fake tools for the host-fact tests (imported by name: `facts_fakes`).

`FakeTools` replays what a box's programs print (tests/fixtures/facts/<box>/tools/<name>.stdout,
.stderr, .rc) and refuses any argv other than the documented one, so a test also proves that
detection calls each tool the way its documentation shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from worker.facts.engines import ARGV_VERSION
from worker.facts.nvidia import ARGV_QUERY
from worker.facts.ryzenadj import ARGV_INFO
from worker.facts.tools import ToolError, ToolOutput
from worker.facts.vulkan import ARGV_SUMMARY

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "facts"

# What each tool must be called with (rocminfo takes no arguments).
EXPECTED_ARGS: dict[str, tuple[str, ...]] = {
    "vulkaninfo": ARGV_SUMMARY,
    "nvidia-smi": ARGV_QUERY,
    "ryzenadj": ARGV_INFO,
    "rocminfo": (),
    "llama-bench": ARGV_VERSION,
    "llama-server": ARGV_VERSION,
}


class FakeTools:
    """`which` and `run` for detect_host_facts, answering from a fixture's tools/ folder."""

    def __init__(self, tools_dir: Path, bin_dir: str = "/usr/bin") -> None:
        self.dir = tools_dir
        self.bin_dir = bin_dir
        self.calls: list[list[str]] = []

    def _file(self, name: str, ext: str) -> Path:
        return self.dir / f"{name}.{ext}"

    def which(self, name: str) -> str | None:
        if self._file(name, "stdout").exists() or self._file(name, "stderr").exists():
            return f"{self.bin_dir}/{name}"
        return None

    def run(self, argv: Sequence[str], timeout_s: float) -> ToolOutput:
        assert timeout_s > 0
        self.calls.append(list(argv))
        name = Path(argv[0]).name
        assert tuple(argv[1:]) == EXPECTED_ARGS[name], f"unexpected argv {argv}"
        stdout, stderr, rc = (self._file(name, ext) for ext in ("stdout", "stderr", "rc"))
        if not stdout.exists() and not stderr.exists():
            raise ToolError(f"`{argv[0]}` cannot be run: No such file or directory")
        return ToolOutput(
            returncode=int(rc.read_text()) if rc.exists() else 0,
            stdout=stdout.read_text() if stdout.exists() else "",
            stderr=stderr.read_text() if stderr.exists() else "",
        )


def box_root(name: str) -> Path:
    return FIXTURES / name / "root"
