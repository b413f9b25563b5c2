"""worker.platform.proc and .pipes: what a Windows box would call, and the psutil tree kill
both platforms share, run for real on Linux.

Nothing here runs on Windows. The Windows branch is checked by its dispatch (which functions a
`sys.platform == "win32"` box calls: no killpg, no sessions, CTRL_BREAK_EVENT for the polite
stop, psutil for the hard one) and by running the shared psutil code on real process trees.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.worker import test_process as posix_tests
from tests.worker.test_process import _wait_gone
from worker.engines.process import ProcessTree
from worker.platform import current_platform
from worker.platform import proc as platform_proc

# A parent that starts two grandchildren: one stays in its group, one leaves it (setsid).
TREE = """
import os, sys, time
pids = []
for detach in (False, True):
    pid = os.fork()
    if pid == 0:
        if detach:
            os.setsid()
        time.sleep(600)
        os._exit(0)
    pids.append(pid)
# Printed once the detached child is in its own session (its setsid runs when it gets the CPU).
while os.getsid(pids[1]) == os.getsid(0):
    time.sleep(0.01)
print(*pids, flush=True)
time.sleep(600)
"""


def test_platform_names() -> None:
    assert [current_platform(p) for p in ("linux", "win32", "darwin", "freebsd14")] == [
        "linux",
        "windows",
        "macos",
        "other",
    ]


def test_popen_arguments_per_platform() -> None:
    assert platform_proc.group_popen_kwargs("linux") == {"start_new_session": True}
    assert platform_proc.group_popen_kwargs("darwin") == {"start_new_session": True}
    # winbase.h CREATE_NEW_PROCESS_GROUP; subprocess defines it only on Windows
    assert platform_proc.group_popen_kwargs("win32") == {"creationflags": 0x200}
    assert getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200) == 0x200
    assert platform_proc.pipes_need_threads("win32") and not platform_proc.pipes_need_threads()
    assert platform_proc.session_of(os.getpid(), "win32") is None
    assert platform_proc.session_of(os.getpid()) == os.getsid(0)


def _calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Records os.killpg and the os.kill calls that carry CTRL_BREAK_EVENT (1, SIGHUP on
    Linux), sending none of them; other os.kill calls (psutil's SIGKILL) go through."""
    calls: list[tuple[str, int, int]] = []
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        if sig == platform_proc.CTRL_BREAK_EVENT:
            calls.append(("kill", pid, sig))
        else:
            real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(os, "killpg", lambda pid, sig: calls.append(("killpg", pid, sig)))
    return calls


def test_windows_asks_the_group_with_ctrl_break_and_never_calls_killpg(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _calls(monkeypatch)
    platform_proc.signal_group(4242, hard=False, sys_platform="win32")
    platform_proc.signal_group(4242, hard=True, sys_platform="win32")
    assert calls == [("kill", 4242, 1)]  # CTRL_BREAK_EVENT; the hard end is per process


def test_posix_signals_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _calls(monkeypatch)
    platform_proc.signal_group(4242, hard=False, sys_platform="linux")
    platform_proc.signal_group(4242, hard=True, sys_platform="darwin")
    assert calls == [("killpg", 4242, signal.SIGTERM), ("killpg", 4242, signal.SIGKILL)]


def _start_tree(tmp_path: Path) -> tuple[subprocess.Popen[str], list[int]]:
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    grandchildren = [int(pid) for pid in proc.stdout.readline().split()]
    assert len(grandchildren) == 2
    return proc, grandchildren


@pytest.fixture
def as_windows(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Make worker.platform.proc take its Windows branch; records os.kill/os.killpg calls
    (on Linux os.kill(pid, 1) would send SIGHUP, so none may really be sent)."""
    monkeypatch.setattr(platform_proc, "is_windows", lambda _platform=None: True)
    return _calls(monkeypatch)


def test_windows_branch_kills_a_real_tree_through_psutil(
    tmp_path: Path, as_windows: list[tuple[str, int, int]]
) -> None:
    proc, grandchildren = _start_tree(tmp_path)
    try:
        tree = ProcessTree(proc.pid)
        tree.track()  # a Windows box has only what it tracked: no group, no session
        assert {proc.pid, *grandchildren} <= {p.pid for p in tree.members()}
        tree.end(hard=False)  # polite: CTRL_BREAK to the group only, nobody dies
        assert as_windows == [("kill", proc.pid, 1)]
        assert all(psutil.pid_exists(pid) and not _wait_gone_now(pid) for pid in grandchildren)
        tree.kill()
        proc.wait(timeout=60)
        assert all(_wait_gone(pid) for pid in grandchildren), "a grandchild survived"
        assert tree.survivors() == []
        assert not [c for c in as_windows if c[0] == "killpg"]
    finally:
        for pid in grandchildren:
            _kill_quietly(pid)
        proc.kill()


def test_windows_branch_misses_what_it_never_tracked(
    tmp_path: Path, as_windows: list[tuple[str, int, int]]
) -> None:
    """The limit of the Windows branch without a job object: a helper whose parent died before
    any walk of the tree saw it is not found (POSIX finds it by its session, next test)."""
    proc, grandchildren = _start_tree(tmp_path)
    try:
        tree = ProcessTree(proc.pid)  # no track(): the children were never seen
        proc.kill()
        proc.wait(timeout=60)
        assert not set(grandchildren) & {p.pid for p in tree.members()}
    finally:
        for pid in grandchildren:
            _kill_quietly(pid)


def test_posix_finds_a_helper_in_the_session_it_never_tracked(tmp_path: Path) -> None:
    proc, grandchildren = _start_tree(tmp_path)
    try:
        tree = ProcessTree(proc.pid)
        proc.kill()
        proc.wait(timeout=60)
        stayed, detached = grandchildren
        members = {p.pid for p in tree.members()}
        assert stayed in members and detached not in members
    finally:
        for pid in grandchildren:
            _kill_quietly(pid)


def _wait_gone_now(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


@pytest.fixture
def threaded_pipes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read the child's pipes as a Windows box does: one thread per pipe (the POSIX tests of
    tests/worker/test_process.py run again through it)."""
    monkeypatch.setattr(platform_proc, "pipes_need_threads", lambda _platform=None: True)


def test_threaded_pipes_keep_output_bounded(tmp_path: Path, threaded_pipes: None) -> None:
    posix_tests.test_huge_output_is_kept_as_a_bounded_head_and_tail(tmp_path)


def test_threaded_pipes_end_on_timeout_with_a_child_holding_them(
    tmp_path: Path, threaded_pipes: None
) -> None:
    posix_tests.test_timeout_with_a_detached_child_holding_the_pipes_ends_and_kills_it(tmp_path)


def test_threaded_pipes_with_an_engine_that_exits(tmp_path: Path, threaded_pipes: None) -> None:
    posix_tests.test_an_engine_that_exits_leaves_no_child_behind(tmp_path)


def test_threaded_pipes_stop_adding_after_the_drain_deadline(tmp_path: Path) -> None:
    """A writer that outlives finish() changes nothing that was returned."""
    from worker.platform.pipes import PipeThreads

    read_end, write_end = os.pipe()
    got: list[bytes] = []

    class Sink:
        def add(self, chunk: bytes) -> None:
            got.append(chunk)

    threads = PipeThreads({os.fdopen(read_end, "rb"): Sink()})
    os.write(write_end, b"before")
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    threads.finish(time.monotonic())  # the writer still holds the pipe: stop now
    os.write(write_end, b"after")
    os.close(write_end)  # the reader sees its end of file and closes its own pipe
    deadline = time.monotonic() + 30
    while not threads.closed() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threads.closed()
    assert b"".join(got) == b"before"
