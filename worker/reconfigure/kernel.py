"""Commands the owner named: a boot-loader tool that sets a kernel parameter, and the reboot.

Example: `ttm.pages_limit` is a kernel parameter, so switching it means rewriting the kernel
command line (grubby, or editing /etc/default/grub + update-grub, or kernelstub) and booting::

    command: ["/usr/sbin/grubby", "--update-kernel=ALL", "--args=ttm.pages_limit={value}"]

The argv runs as is, never through a shell; only `{value}` is filled in, with a configuration
value that was checked against the axis's format (a number of pages, a VRAM size).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from worker.errors import ReconfigureError

_TAIL_LINES = 5
_TAIL_CHARS = 600


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: its exit status and what it printed (stdout, then stderr)."""

    returncode: int
    output: str


# argv, timeout in seconds -> result; raises OSError (cannot start) or
# subprocess.TimeoutExpired. Injectable, so tests record commands instead of running them.
Run = Callable[[Sequence[str], float], CommandResult]


def run_argv(argv: Sequence[str], timeout_s: float) -> CommandResult:
    """The default `run`: the program, no shell, no stdin, output captured."""
    done = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout_s,
        check=False,
    )
    return CommandResult(done.returncode, (done.stdout or "") + (done.stderr or ""))


def fill(command: Sequence[str], value: str) -> list[str]:
    """The argv with `{value}` filled in (the config allows no other placeholder)."""
    return [part.format(value=value) for part in command]


def run_checked(run: Run, argv: Sequence[str], timeout_s: float, what: str) -> None:
    """Run `argv`; ReconfigureError naming `what`, the argv and the end of its output on failure."""
    shown = " ".join(argv)
    try:
        result = run(argv, timeout_s)
    except subprocess.TimeoutExpired:
        raise ReconfigureError(f"{what}: `{shown}` timed out after {timeout_s:g} s") from None
    except OSError as exc:
        raise ReconfigureError(
            f"{what}: `{shown}` could not start: {exc.strerror or exc}"
        ) from None
    if result.returncode != 0:
        tail = output_tail(result.output)
        raise ReconfigureError(
            f"{what}: `{shown}` exited {result.returncode}" + (f": {tail}" if tail else "")
        )


def output_tail(output: str) -> str:
    """The last few lines of a command's output, bounded: enough to see why, never a flood."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    tail = " | ".join(lines[-_TAIL_LINES:])
    return tail if len(tail) <= _TAIL_CHARS else "..." + tail[-_TAIL_CHARS:]
