"""Running the box's own tools (vulkaninfo, nvidia-smi, ryzenadj, rocminfo, engine --version).

Tools are found with `which` and run with `run`; both are injectable so tests pass fakes that
replay real output. Every call is an argv list (never a shell string) with a short timeout: a
hung driver must cost a worker start a few seconds, not forever.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# vulkaninfo and nvidia-smi initialise the driver, which takes ~0.1-2 s; 10 s means "hung".
TOOL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ToolOutput:
    returncode: int
    stdout: str
    stderr: str


class ToolError(Exception):
    """The tool could not be started, or did not finish in time (the message says which)."""


Which = Callable[[str], str | None]
Run = Callable[[Sequence[str], float], ToolOutput]


def run_tool(argv: Sequence[str], timeout_s: float) -> ToolOutput:
    """Run `argv` without a shell or stdin, in the C locale so output is not translated."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            errors="replace",
            stdin=subprocess.DEVNULL,
            timeout=timeout_s,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"`{' '.join(argv)}` did not finish within {timeout_s:g} s") from exc
    except OSError as exc:
        raise ToolError(f"`{argv[0]}` cannot be run: {exc.strerror or exc}") from exc
    return ToolOutput(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Tools:
    """How this detection finds and runs programs (real ones unless a test says otherwise)."""

    which: Which = shutil.which
    run: Run = run_tool
    timeout_s: float = TOOL_TIMEOUT_S

    def call(self, argv: Sequence[str]) -> ToolOutput:
        return self.run(argv, self.timeout_s)


def last_words(output: ToolOutput, *, stdout_first: bool = False) -> str:
    """The last non-empty line a failed tool printed (its error message, usually).

    Most tools report errors on stderr; ryzenadj prints them on stdout (`stdout_first`)."""
    streams = (output.stdout, output.stderr) if stdout_first else (output.stderr, output.stdout)
    for text in streams:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return "no output"
