"""Run an engine binary as a child that can never outlive the job.

A benchmark left running after its worker died would overlap the next job on the same box and
spoil both. So the child gets its own process group (killed whole on timeout) and, on Linux, a
parent-death signal (killed when the worker is SIGKILLed).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1
TAIL_LINES = 40


@dataclass(frozen=True)
class ProcessOutcome:
    returncode: int | None  # None when killed for the timeout
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float

    def stderr_tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.stderr.strip().splitlines()[-lines:])


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when the worker dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def set_pdeathsig() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return set_pdeathsig


def ignore_pid(_pid: int) -> None:
    """The default `on_start`/`on_process` callback: nobody follows the process."""
    return None


def run_bounded(
    argv: list[str], timeout_s: float, on_start: Callable[[int], None] = ignore_pid
) -> ProcessOutcome:
    """Run `argv` (never a shell string) for at most `timeout_s` seconds."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
        preexec_fn=die_with_parent(),  # noqa: PLW1509 - needed for the parent-death signal
    )
    started = time.monotonic()
    on_start(proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        stdout, stderr = proc.communicate()
        timed_out = True
    return ProcessOutcome(
        returncode=None if timed_out else proc.returncode,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        wall_s=time.monotonic() - started,
    )


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        proc.kill()
