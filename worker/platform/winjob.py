"""A Windows job object that holds an engine's whole process tree and ends it when closed.

Windows has no sessions and no parent-death signal, so a helper an engine starts and detaches
between two walks of the tree (worker.engines.process.ProcessTree) would outlive the job. A job
object closes that gap: the engine is assigned to it right after it starts, every process it
starts from then on joins the job too (no breakaway is allowed), and the job carries
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, so when its last handle closes (at the end of the job, or
when the worker itself dies and Windows closes its handles) every process still in it is
terminated.

Only a process the engine starts in the microseconds between CreateProcess and
AssignProcessToJobObject can escape (Popen cannot start a child suspended); the psutil tree
kill still covers that one when it tracked it.

Calls and layouts follow Microsoft's documentation (learn.microsoft.com, Win32 API, winnt.h /
jobapi2.h / processthreadsapi.h): CreateJobObjectW, SetInformationJobObject with
JobObjectExtendedLimitInformation (9) and a JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
OpenProcess(PROCESS_SET_QUOTA | PROCESS_TERMINATE), AssignProcessToJobObject, CloseHandle.
Since Windows 8 a process may be in nested jobs, so this works when the worker itself runs in
one (a Scheduled Task does). Types are spelled with fixed-size ctypes (DWORD = c_uint32) rather
than ctypes.wintypes so the layout is the Windows one on any machine the tests run on.

This module is imported only on Windows (worker.platform.proc.contain) or by tests, which pass
a stand-in for kernel32 that records the calls.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

log = logging.getLogger(__name__)

# winnt.h
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS = 9  # JobObjectExtendedLimitInformation
PROCESS_TERMINATE = 0x0001
PROCESS_SET_QUOTA = 0x0100

DWORD = ctypes.c_uint32
BOOL = ctypes.c_int32
HANDLE = ctypes.c_void_p
SIZE_T = ctypes.c_size_t
ULONG_PTR = ctypes.c_size_t
LARGE_INTEGER = ctypes.c_int64
ULONGLONG = ctypes.c_uint64


class JOBOBJECT_BASIC_LIMIT_INFORMATION(ctypes.Structure):  # noqa: N801 - the winnt.h name
    _fields_ = (
        ("PerProcessUserTimeLimit", LARGE_INTEGER),
        ("PerJobUserTimeLimit", LARGE_INTEGER),
        ("LimitFlags", DWORD),
        ("MinimumWorkingSetSize", SIZE_T),
        ("MaximumWorkingSetSize", SIZE_T),
        ("ActiveProcessLimit", DWORD),
        ("Affinity", ULONG_PTR),
        ("PriorityClass", DWORD),
        ("SchedulingClass", DWORD),
    )


class IO_COUNTERS(ctypes.Structure):  # noqa: N801 - the winnt.h name
    _fields_ = tuple(
        (name, ULONGLONG)
        for name in (
            "ReadOperationCount",
            "WriteOperationCount",
            "OtherOperationCount",
            "ReadTransferCount",
            "WriteTransferCount",
            "OtherTransferCount",
        )
    )


class JOBOBJECT_EXTENDED_LIMIT_INFORMATION(ctypes.Structure):  # noqa: N801 - the winnt.h name
    _fields_ = (
        ("BasicLimitInformation", JOBOBJECT_BASIC_LIMIT_INFORMATION),
        ("IoInfo", IO_COUNTERS),
        ("ProcessMemoryLimit", SIZE_T),
        ("JobMemoryLimit", SIZE_T),
        ("PeakProcessMemoryUsed", SIZE_T),
        ("PeakJobMemoryUsed", SIZE_T),
    )


# name: (restype, argtypes), as the Win32 prototypes declare them
PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "CreateJobObjectW": (HANDLE, [ctypes.c_void_p, ctypes.c_wchar_p]),
    "SetInformationJobObject": (BOOL, [HANDLE, ctypes.c_int, ctypes.c_void_p, DWORD]),
    "OpenProcess": (HANDLE, [DWORD, BOOL, DWORD]),
    "AssignProcessToJobObject": (BOOL, [HANDLE, HANDLE]),
    "CloseHandle": (BOOL, [HANDLE]),
}


class JobError(OSError):
    """A job object call failed (its Windows error code, GetLastError, in `errno`)."""


def load_kernel32() -> Any:
    """kernel32 with the prototypes above set; JobError where there is none (not Windows)."""
    windll = getattr(ctypes, "WinDLL", None)
    if windll is None:
        raise JobError(0, "no kernel32 here (ctypes.WinDLL exists on Windows only)")
    return declare(windll("kernel32", use_last_error=True))


def declare(kernel32: Any) -> Any:
    for name, (restype, argtypes) in PROTOTYPES.items():
        function = getattr(kernel32, name)
        function.restype, function.argtypes = restype, argtypes
    return kernel32


def _last_error() -> int:
    get = getattr(ctypes, "get_last_error", None)  # Windows only
    return int(get()) if get is not None else 0


class JobObject:
    """One job object with KILL_ON_JOB_CLOSE; `assign(pid)` puts a process in it, `close()`
    ends every process still in it. Raises JobError when Windows refuses."""

    def __init__(self, kernel32: Any | None = None) -> None:
        self._k = kernel32 if kernel32 is not None else load_kernel32()
        handle = self._k.CreateJobObjectW(None, None)
        if not handle:
            raise JobError(_last_error(), "CreateJobObjectW failed")
        self._handle: int | None = handle
        info = JOBOBJECT_EXTENDED_LIMIT_INFORMATION()
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        if not self._k.SetInformationJobObject(
            handle,
            JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS,
            ctypes.addressof(info),
            ctypes.sizeof(info),
        ):
            error = _last_error()
            self.close()
            raise JobError(error, "SetInformationJobObject(KILL_ON_JOB_CLOSE) failed")

    def assign(self, pid: int) -> None:
        process = self._k.OpenProcess(PROCESS_SET_QUOTA | PROCESS_TERMINATE, False, pid)
        if not process:
            raise JobError(_last_error(), f"OpenProcess({pid}) failed")
        try:
            if not self._k.AssignProcessToJobObject(self._handle, process):
                raise JobError(_last_error(), f"AssignProcessToJobObject({pid}) failed")
        finally:
            self._k.CloseHandle(process)

    def close(self) -> None:
        """Close the job's handle: Windows terminates every process still in the job. Safe to
        call twice."""
        handle, self._handle = self._handle, None
        if handle is not None:
            self._k.CloseHandle(handle)


def contain(pid: int, kernel32: Any | None = None) -> JobObject | None:
    """A job object holding `pid`, or None (logged) when Windows refuses: the engine then runs
    with the psutil tree kill alone, as before job objects, rather than not at all."""
    try:
        job = JobObject(kernel32)
    except OSError as exc:
        log.warning("no job object for engine pid %d: %s", pid, exc)
        return None
    try:
        job.assign(pid)
    except OSError as exc:
        job.close()
        log.warning("engine pid %d is not in a job object: %s", pid, exc)
        return None
    return job
