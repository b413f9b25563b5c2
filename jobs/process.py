"""Telling one process apart from a later one that reuses its id (both sides need it: the
one-box supervisor signals only its own children, an agent re-queues a predecessor's jobs only
once that predecessor is gone from the box)."""

from __future__ import annotations

import os
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot of this machine (random per boot); "" where there is no /proc (macOS)."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def process_token(pid: int) -> str:
    """What tells this process apart from a later one that reuses its id: the boot it runs in
    and its start time (`/proc/PID/stat` field 22); "" where there is no /proc (macOS)."""
    try:
        boot = _BOOT_ID.read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return ""


def same_process(pid: int, token: str) -> bool:
    """`pid` is alive and is the process that was recorded with `token` (not a reuse of its
    id after a reboot or a crash): only such a process may be signalled."""
    if not pid_alive(pid):
        return False
    now = process_token(pid)
    return not token or not now or now == token


def pid_alive(pid: int | None) -> bool:
    """A live process (not a zombie) with this id."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie answers kill(0) but is gone for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we know
