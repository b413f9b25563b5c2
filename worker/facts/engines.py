"""Engine builds: the version line each configured binary prints for `--version`.

llama.cpp prints to stderr `version: 6134 (de2192b8)` then `built with ...`; the build from the
llama-cpp-python 0.3.36 sdist prints `version: 0.5.0-dev (build 1, commit 0c1e570)` (seen here).
Builds with GPU or dynamically loaded backends may log backend lines before it, so the
`version:` line is picked out rather than taking line one. Other engines print their version on
stdout (`ollama --version` -> "ollama version is 0.5.7").
"""

from __future__ import annotations

from pathlib import Path

from worker.facts._common import FactLog
from worker.facts.tools import ToolError, Tools

ARGV_VERSION = ("--version",)


def version_line(stdout: str, stderr: str) -> str | None:
    for text in (stderr, stdout):
        for line in text.splitlines():
            if line.strip().lower().startswith("version:"):
                return line.strip()
    for text in (stdout, stderr):
        for line in text.splitlines():
            if line.strip():
                return line.strip()
    return None


def engine_versions(binaries: dict[str, Path], tools: Tools, log: FactLog) -> dict[str, str]:
    """binary path -> version line, for every configured binary that answers."""
    versions: dict[str, str] = {}
    for name, binary in binaries.items():
        try:
            output = tools.call([str(binary), *ARGV_VERSION])
        except ToolError as exc:
            log.note(f"engines: {name}: {exc}")
            continue
        line = version_line(output.stdout, output.stderr)
        if output.returncode != 0 or line is None:
            log.note(
                f"engines: {name}: `{binary} --version` exited {output.returncode}"
                + (f": {line}" if line else " without output")
            )
            continue
        versions[str(binary)] = line
    return versions
