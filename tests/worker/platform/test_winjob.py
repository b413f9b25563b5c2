"""worker.platform.winjob: the Windows job object every engine is put in, checked on Linux.

Nothing here runs on Windows. What is checked: the structure layout against the one Microsoft
documents for winnt.h (learn.microsoft.com/windows/win32/api/winnt/
ns-winnt-jobobject_extended_limit_information and ns-winnt-jobobject_basic_limit_information,
x64 and x86 sizes), the calls a Windows box would make (a stand-in kernel32 records them,
checks each argument against the declared prototype the way ctypes would, and reads the limit
structure back from the memory address it was given), and the dispatch: real engine runs on
Linux with the Windows branch taken, and never a winjob import on POSIX.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from worker.engines.process import ProcessTree, run_bounded
from worker.platform import proc as platform_proc
from worker.platform import winjob

POINTER_SIZE = ctypes.sizeof(ctypes.c_void_p)
# Documented layouts: JOBOBJECT_BASIC_LIMIT_INFORMATION is 2 LARGE_INTEGER, DWORD LimitFlags,
# 2 SIZE_T, DWORD, ULONG_PTR, 2 DWORD (64 bytes on x64, 48 on x86 with 8-byte LARGE_INTEGER
# alignment); IO_COUNTERS is 6 ULONGLONG (48); the extended one adds 4 SIZE_T.
EXPECTED = {
    8: {"basic": 64, "io": 48, "extended": 144},
    4: {"basic": 48, "io": 48, "extended": 112},
}
LIMIT_FLAGS_OFFSET = 16  # after the two LARGE_INTEGER time limits, on both


class FakeFunction:
    """A kernel32 function: takes restype/argtypes as ctypes' do, checks each call's arguments
    against them (from_param raises TypeError as a real call would) and records the call."""

    def __init__(self, name: str, kernel: FakeKernel32) -> None:
        self.name, self.kernel = name, kernel
        self.restype: Any = None
        self.argtypes: list[Any] | None = None

    def __call__(self, *args: Any) -> int:
        assert self.argtypes is not None, f"{self.name} called before its prototype was set"
        assert len(args) == len(self.argtypes), f"{self.name}: {len(args)} arguments"
        for argtype, arg in zip(self.argtypes, args, strict=True):
            argtype.from_param(arg)
        self.kernel.calls.append((self.name, args))
        return self.kernel.answer(self.name, args)


class FakeKernel32:
    """Records calls; hands out handles 100, 101, ...; `refuse` names calls that return 0."""

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.refuse = refuse
        self.limit_info: bytes = b""
        self.handed_out: list[int] = []
        self._next = 100
        for name in winjob.PROTOTYPES:
            setattr(self, name, FakeFunction(name, self))

    def answer(self, name: str, args: tuple[Any, ...]) -> int:
        if name in self.refuse:
            return 0
        if name == "SetInformationJobObject":
            _job, _cls, address, length = args
            self.limit_info = ctypes.string_at(address, length)  # what Windows would read
        if name in ("CreateJobObjectW", "OpenProcess"):
            self._next += 1
            self.handed_out.append(self._next - 1)
            return self._next - 1
        return 1

    def names(self) -> list[str]:
        return [name for name, _args in self.calls]


def _use(monkeypatch: pytest.MonkeyPatch, fake: FakeKernel32) -> None:
    monkeypatch.setattr(winjob, "load_kernel32", lambda: winjob.declare(fake))


def test_structures_have_the_documented_layout() -> None:
    sizes = EXPECTED[POINTER_SIZE]
    assert ctypes.sizeof(winjob.JOBOBJECT_BASIC_LIMIT_INFORMATION) == sizes["basic"]
    assert ctypes.sizeof(winjob.IO_COUNTERS) == sizes["io"]
    assert ctypes.sizeof(winjob.JOBOBJECT_EXTENDED_LIMIT_INFORMATION) == sizes["extended"]
    assert winjob.JOBOBJECT_BASIC_LIMIT_INFORMATION.LimitFlags.offset == LIMIT_FLAGS_OFFSET
    assert winjob.JOBOBJECT_EXTENDED_LIMIT_INFORMATION.IoInfo.offset == sizes["basic"]
    # the prototypes' fixed sizes are Windows' (DWORD and BOOL 32 bits, HANDLE a pointer)
    assert ctypes.sizeof(winjob.DWORD) == ctypes.sizeof(winjob.BOOL) == 4
    assert ctypes.sizeof(winjob.HANDLE) == POINTER_SIZE
    # winnt.h values
    assert winjob.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE == 0x2000
    assert winjob.JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS == 9


def test_a_job_object_is_made_kill_on_close_and_holds_the_process() -> None:
    fake = FakeKernel32()
    job = winjob.JobObject(winjob.declare(fake))
    job.assign(4242)
    job.close()
    job.close()  # twice: the handle is closed once
    assert fake.names() == ["CreateJobObjectW", "SetInformationJobObject", "OpenProcess",
                            "AssignProcessToJobObject", "CloseHandle", "CloseHandle"]  # fmt: skip
    create, setinfo, open_process, assign, close_process, close_job = (a for _n, a in fake.calls)
    assert create == (None, None)  # default security, no name
    job_handle = 100
    assert setinfo[0] == job_handle and setinfo[1] == 9
    assert setinfo[3] == EXPECTED[POINTER_SIZE]["extended"] == len(fake.limit_info)
    flags = int.from_bytes(fake.limit_info[LIMIT_FLAGS_OFFSET : LIMIT_FLAGS_OFFSET + 4], "little")
    assert flags == 0x2000  # KILL_ON_JOB_CLOSE and nothing else: no breakaway allowed
    others = fake.limit_info[:LIMIT_FLAGS_OFFSET] + fake.limit_info[LIMIT_FLAGS_OFFSET + 4 :]
    assert others == bytes(len(others))  # no other limit set
    assert open_process == (0x0100 | 0x0001, False, 4242)  # PROCESS_SET_QUOTA | TERMINATE
    assert assign == (job_handle, 101)
    assert close_process == (101,) and close_job == (job_handle,)


def test_a_bad_argument_is_caught_by_the_prototypes() -> None:
    fake = winjob.declare(FakeKernel32())
    with pytest.raises(TypeError):
        fake.OpenProcess(0x101, False, "not a pid")


@pytest.mark.parametrize("refused", ["CreateJobObjectW", "SetInformationJobObject",
                                     "OpenProcess", "AssignProcessToJobObject"])  # fmt: skip
def test_a_refusal_leaves_the_engine_running_without_a_job(
    refused: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeKernel32(refuse=(refused,))
    with caplog.at_level(logging.WARNING, logger="worker.platform.winjob"):
        assert winjob.contain(4242, winjob.declare(fake)) is None
    assert "4242" in caplog.text and refused in caplog.text
    closed = [args[0] for name, args in fake.calls if name == "CloseHandle"]
    assert sorted(closed) == fake.handed_out  # every handle it got is closed again, once
    assert len(fake.handed_out) == {"CreateJobObjectW": 0, "AssignProcessToJobObject": 2}.get(
        refused, 1
    )


@pytest.fixture
def as_windows(monkeypatch: pytest.MonkeyPatch) -> FakeKernel32:
    """worker.platform.proc takes its Windows branch with a recording kernel32; os.kill with
    CTRL_BREAK_EVENT (SIGHUP on Linux) is swallowed, psutil's kills go through."""
    monkeypatch.setattr(platform_proc, "is_windows", lambda _platform=None: True)
    # Popen on Linux refuses creationflags: the child starts a session instead
    monkeypatch.setattr(platform_proc, "group_popen_kwargs", lambda: {"start_new_session": True})
    real_kill: Callable[[int, int], None] = os.kill

    def kill(pid: int, sig: int) -> None:
        if sig != platform_proc.CTRL_BREAK_EVENT:
            real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    fake = FakeKernel32()
    _use(monkeypatch, fake)
    return fake


def test_every_engine_run_is_put_in_a_job_that_is_closed_at_the_end(
    as_windows: FakeKernel32,
) -> None:
    started: list[int] = []
    done = run_bounded([sys.executable, "-c", "print('ran')"], 120, on_start=started.append)
    assert done.stdout.strip() == "ran" and done.returncode == 0
    opened = [args for name, args in as_windows.calls if name == "OpenProcess"]
    assert [args[2] for args in opened] == started  # the engine's pid, once
    job_closes = [
        args for name, args in as_windows.calls if name == "CloseHandle" and args[0] == 100
    ]
    assert job_closes == [(100,)]  # the job ends with the run, once
    assert as_windows.names()[-1] == "CloseHandle"  # nothing is asked of the job after it


def test_a_killed_tree_closes_its_job_after_the_psutil_kill(as_windows: FakeKernel32) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        tree = ProcessTree(child.pid)
        assert as_windows.names() == [
            "CreateJobObjectW",
            "SetInformationJobObject",
            "OpenProcess",
            "AssignProcessToJobObject",
            "CloseHandle",
        ]
        tree.kill()
        assert child.wait(timeout=60) is not None  # psutil ended it before the job closed
        assert as_windows.calls[-1] == ("CloseHandle", (100,))
        tree.kill()
        assert [a for n, a in as_windows.calls if n == "CloseHandle"].count((100,)) == 1
    finally:
        child.kill()
        child.wait()


def test_posix_makes_no_job_and_never_imports_winjob() -> None:
    assert platform_proc.contain(os.getpid(), "linux") is None
    assert platform_proc.contain(os.getpid(), "darwin") is None
    code = (
        "import os, sys\n"
        "from worker.engines.process import ProcessTree, run_bounded\n"
        "run_bounded([sys.executable, '-c', 'pass'], 60)\n"
        "print('worker.platform.winjob' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    assert done.stdout.strip() == "False"
