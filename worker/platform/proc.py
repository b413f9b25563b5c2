"""Start a child in a process group of its own, and end its whole tree, on POSIX and Windows.

POSIX (Linux, macOS): the child starts a session of its own (`start_new_session`), so one
`killpg` reaches it and every helper that stayed in its group; SIGTERM asks, SIGKILL ends.
`os.getsid` then finds helpers that left the group but not the session.

Windows has neither sessions, `killpg` nor signals: the child starts with
CREATE_NEW_PROCESS_GROUP (so CTRL_BREAK_EVENT, the console's "please exit", reaches it and its
console children, and not the worker), and ending the tree means ending every process psutil
saw in it, one by one (TerminateProcess). A process the worker never saw (started and detached
between two walks of the tree) is caught by the job object the engine is put in at start
(`contain`, worker.platform.winjob): closing it at the end of the job ends what is left.

The last step is the same everywhere: `end_processes` signals each process psutil tracked,
whose identity check (pid + creation time) keeps a reused pid safe.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from typing import Any, Protocol

import psutil  # type: ignore[import-untyped]  # no stubs installed; calls are checked by tests

from worker.platform import is_windows

# winbase.h values; `subprocess` and `signal` define them on Windows only.
CREATE_NEW_PROCESS_GROUP = 0x00000200
CTRL_BREAK_EVENT = 1


def group_popen_kwargs(sys_platform: str | None = None) -> dict[str, Any]:
    """Popen keyword arguments that start the child in a group of its own."""
    if is_windows(sys_platform):
        return {"creationflags": CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


class Container(Protocol):
    """What holds a process tree beyond psutil's reach (a Windows job object)."""

    def close(self) -> None:
        """End every process still held."""


def contain(pid: int, sys_platform: str | None = None) -> Container | None:
    """Put the just-started `pid` in a job object that kills its tree when closed (Windows);
    None elsewhere (POSIX sessions and, on Linux, the parent-death signal do that job) or when
    Windows refuses (logged)."""
    if not is_windows(sys_platform):
        return None
    from worker.platform import winjob  # ctypes.WinDLL exists on Windows only

    return winjob.contain(pid)


def pipes_need_threads(sys_platform: str | None = None) -> bool:
    """True where `select` cannot wait on pipes (Windows: sockets only), so each pipe is read
    on a thread of its own (worker.platform.pipes)."""
    return is_windows(sys_platform)


def has_sessions(sys_platform: str | None = None) -> bool:
    """True where processes belong to POSIX sessions (everywhere but Windows)."""
    return not is_windows(sys_platform)


def session_of(pid: int, sys_platform: str | None = None) -> int | None:
    """The POSIX session id of `pid`; None on Windows (no sessions) or when it is gone."""
    if is_windows(sys_platform):
        return None
    try:
        return os.getsid(pid)
    except OSError:
        return None


def signal_group(group_pid: int, hard: bool, sys_platform: str | None = None) -> None:
    """Ask the group led by `group_pid` to exit (`hard=False`) or kill it (`hard=True`).

    On Windows only the polite request exists for a group (CTRL_BREAK_EVENT); the hard end is
    `end_processes` on each member. A group that is already gone is not an error.
    """
    if is_windows(sys_platform):
        if not hard:
            # Fails (OSError) when the worker has no console, e.g. run as a Scheduled Task:
            # then only the hard end that follows is left.
            with contextlib.suppress(OSError):
                os.kill(group_pid, CTRL_BREAK_EVENT)
        return
    sig = signal.SIGKILL if hard else signal.SIGTERM
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group_pid, sig)


def end_processes(
    processes: Iterable[psutil.Process], hard: bool, sys_platform: str | None = None
) -> None:
    """Signal each process psutil tracked: SIGKILL / TerminateProcess when `hard`, else SIGTERM.

    On Windows there is nothing polite to send to one process (no SIGTERM; CTRL_BREAK_EVENT
    goes to a whole console group), so `hard=False` leaves the members alone there.
    """
    if not hard and is_windows(sys_platform):
        return
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if hard:
                process.kill()
            else:
                process.terminate()
