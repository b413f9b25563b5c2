"""Run an engine binary as a child that can never outlive the job, nor hang or flood the agent.

A benchmark left running after its job would overlap the next job on the same box and spoil
both. So the child starts a group of its own (a POSIX session; a new process group on Windows,
see worker.platform.proc) and, on Linux, gets a parent-death signal (killed when the worker is
SIGKILLed); on Windows it is put in a job object that ends its whole tree when the job ends or
the worker dies (worker.platform.winjob). Every descendant it starts is tracked while it runs
(psutil) and killed when the job ends, whether it timed out or not: helpers that detach, or
that keep the output pipes open after the engine exits, die too.

Output is read with a deadline and kept bounded: stdout up to STDOUT_CAP_BYTES (llama-bench's
JSON is a few KB), stderr as its last STDERR_TAIL_BYTES. On POSIX the agent reads it without
threads (a selector); on Windows, whose `select` takes sockets only, one thread per pipe
(worker.platform.pipes). A process that escaped every kill and still holds a pipe stops being
read after DRAIN_S.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import psutil  # type: ignore[import-untyped]  # no stubs installed; calls are checked by tests

from worker.platform import proc as platform_proc
from worker.platform.pipes import PipeThreads

_PR_SET_PDEATHSIG = 1
TAIL_LINES = 40
STDOUT_CAP_BYTES = 16 * 1024 * 1024
STDERR_TAIL_BYTES = 256 * 1024
DRAIN_S = 5.0  # reading goes on this long after the engine exited or was killed
# How often the tree is walked while the engine runs: each walk reads /proc, which a benchmark
# should not compete with, and a helper is caught at the end by its session anyway.
TRACK_INTERVAL_S = 1.0
_READ_CHUNK = 64 * 1024
_POLL_S = 0.1  # how soon an exit is noticed while the engine writes nothing


@dataclass(frozen=True)
class ProcessOutcome:
    returncode: int | None  # None when killed for the timeout
    stdout: str
    stderr: str  # the last STDERR_TAIL_BYTES at most
    timed_out: bool
    wall_s: float
    stdout_truncated: bool = False  # stdout went past STDOUT_CAP_BYTES; the rest was dropped

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


def with_parent_death(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """The argv and preexec_fn that start `argv` as a child killed when the worker dies.

    Through setpriv(1) (util-linux) where it can set the parent-death signal: with any
    preexec_fn CPython forks the whole worker instead of using vfork, and copying the page
    tables of a ~90 MB worker took 12-17 ms per start on the 2-core development VM, against
    ~1 ms for vfork plus ~1.5 ms to exec setpriv first (issue 15). A missing program still
    raises OSError here, before anything starts, as Popen would without the wrapper.
    """
    if not sys.platform.startswith("linux"):
        return argv, None
    setpriv = _setpriv()
    if setpriv is None:
        return argv, die_with_parent()
    if shutil.which(argv[0]) is None:
        raise FileNotFoundError(errno.ENOENT, f"{os.strerror(errno.ENOENT)} (or not executable)",
                                argv[0])  # fmt: skip
    return [setpriv, "--pdeathsig", "KILL", "--", *argv], None


@functools.cache
def _setpriv() -> str | None:
    """setpriv's path if it takes --pdeathsig here (util-linux >= 2.33), else None; tried once."""
    found = shutil.which("setpriv")
    if found is None:
        return None
    try:
        done = subprocess.run(
            [found, "--pdeathsig", "KILL", "--", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return found if done.returncode == 0 else None


def ignore_pid(_pid: int) -> None:
    """The default `on_start`/`on_process` callback: nobody follows the process."""
    return None


class ProcessTree:
    """A child started in a group of its own (`platform_proc.group_popen_kwargs`) and every
    descendant seen since.

    `kill()` reaches the session (processes that changed their group but not their session;
    POSIX only), the process group, and each descendant `track()` has seen (those that started
    a session of their own); psutil's identity check (pid plus start time) keeps a reused pid
    safe. On Windows the child is put in a job object at start and `kill()` closes it, which
    ends every process the child started, seen or not.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._seen: dict[int, psutil.Process] = {}
        # The root only: a child that has just been started has no descendants yet, and a walk
        # (psutil reads every process's stat) cost ~4-8 ms a job on a busy box (issue 15). The
        # first walk comes TRACK_INTERVAL_S later, or at the end in members().
        self._tracked_at = time.monotonic()
        with contextlib.suppress(psutil.Error):
            self._seen[pid] = psutil.Process(pid)
        # Windows: a job object holds every process the child starts from now on, even one
        # that detaches before a walk sees it; closing it in kill() ends them (None on POSIX).
        self._job = platform_proc.contain(pid)

    def track(self, at_most_every_s: float = 0.0) -> None:
        """Remember the tree's descendants now (a no-op if done less than the interval ago)."""
        now = time.monotonic()
        if now - self._tracked_at < at_most_every_s:
            return
        self._tracked_at = now
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.pid)
            self._seen.setdefault(root.pid, root)
            for child in root.children(recursive=True):
                self._seen.setdefault(child.pid, child)

    def members(self) -> list[psutil.Process]:
        """Every live process of the tree: tracked, or still in the child's session."""
        self.track()
        found = {p.pid: p for p in self._seen.values() if _running(p)}
        if platform_proc.has_sessions():  # POSIX: the session finds helpers that left the group
            for proc in psutil.process_iter():
                if proc.pid not in found and platform_proc.session_of(proc.pid) == self.pid:
                    found[proc.pid] = proc
        return list(found.values())

    def end(self, hard: bool) -> None:
        """Ask the whole tree to exit (`hard=False`: SIGTERM; CTRL_BREAK on Windows) or kill it."""
        members = self.members()  # first: once a parent dies, its children are not its any more
        platform_proc.signal_group(self.pid, hard)
        platform_proc.end_processes(members, hard)

    def kill(self) -> None:
        """Kill the whole tree and reap what can be reaped; survivors are what is left."""
        self.end(hard=True)
        if self._job is not None:
            self._job.close()  # KILL_ON_JOB_CLOSE: what psutil never saw dies here
        psutil.wait_procs([p for p in self._seen.values() if _running(p)], timeout=2)

    def survivors(self) -> list[int]:
        """Pids of the tree still running (zombies waiting to be reaped are not)."""
        return sorted(p.pid for p in self.members() if _running(p))


def _running(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class _Capture:
    """Bytes read from one pipe: the first `head` bytes, or the last `tail` bytes."""

    def __init__(self, head: int | None = None, tail: int | None = None) -> None:
        self.head, self.tail = head, tail
        self.data = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if self.head is not None and len(self.data) > self.head:
            del self.data[self.head :]
            self.truncated = True
        if self.tail is not None and len(self.data) > self.tail:
            del self.data[: len(self.data) - self.tail]
            self.truncated = True

    def text(self) -> str:
        return bytes(self.data).decode(errors="replace")


def run_bounded(
    argv: list[str], timeout_s: float, on_start: Callable[[int], None] = ignore_pid
) -> ProcessOutcome:
    """Run `argv` (never a shell string) for at most `timeout_s` seconds; its whole process
    tree is killed when it returns, and the output it keeps is bounded."""
    spawn_argv, preexec = with_parent_death(argv)
    proc = subprocess.Popen(
        spawn_argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=preexec,  # noqa: PLW1509 - only where setpriv cannot set the signal
        **platform_proc.group_popen_kwargs(),
    )
    started = time.monotonic()
    tree = ProcessTree(proc.pid)
    stdout, stderr = _Capture(head=STDOUT_CAP_BYTES), _Capture(tail=STDERR_TAIL_BYTES)
    assert proc.stdout is not None and proc.stderr is not None
    pipes: dict[IO[bytes], _Capture] = {proc.stdout: stdout, proc.stderr: stderr}
    threads = PipeThreads(pipes) if platform_proc.pipes_need_threads() else None
    try:
        on_start(proc.pid)
        deadline = started + timeout_s
        if threads is None:
            timed_out = _read_until_exit(proc, tree, pipes, deadline)
        else:
            timed_out = _wait_until_exit(proc, tree, deadline)
    finally:
        tree.kill()  # at the end of every run, not only on timeout
        proc.wait()
        if threads is None:
            _drain(pipes, time.monotonic() + DRAIN_S)
            for pipe in (proc.stdout, proc.stderr):
                pipe.close()
        else:
            threads.finish(time.monotonic() + DRAIN_S)  # each thread closes its own pipe
    return ProcessOutcome(
        returncode=None if timed_out else proc.returncode,
        stdout=stdout.text(),
        stderr=stderr.text(),
        timed_out=timed_out,
        wall_s=time.monotonic() - started,
        stdout_truncated=stdout.truncated,
    )


def _read_until_exit(
    proc: subprocess.Popen[bytes],
    tree: ProcessTree,
    pipes: dict[IO[bytes], _Capture],
    deadline: float,
) -> bool:
    """Read both pipes until the engine exits (False) or the deadline passes (True)."""
    with selectors.DefaultSelector() as selector:
        for pipe in pipes:
            selector.register(pipe, selectors.EVENT_READ)
        while proc.poll() is None:
            now = time.monotonic()
            if now >= deadline:
                return True
            tree.track(TRACK_INTERVAL_S)
            wait_s = min(deadline - now, _POLL_S)
            if selector.get_map():
                _read_ready(selector, pipes, wait_s)
            else:
                # Both pipes are closed, so the engine is exiting: an epoll on no fd would sleep
                # the whole wait_s (up to 100 ms a job, issue 15); waitpid sees the exit at once.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(wait_s)
    return False


def _wait_until_exit(proc: subprocess.Popen[bytes], tree: ProcessTree, deadline: float) -> bool:
    """While threads read the pipes: wait for the engine to exit (False) or the deadline (True)."""
    while proc.poll() is None:
        now = time.monotonic()
        if now >= deadline:
            return True
        tree.track(TRACK_INTERVAL_S)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(min(deadline - now, _POLL_S))
    return False


def _drain(pipes: dict[IO[bytes], _Capture], deadline: float) -> None:
    """Read what is left until every pipe is at end of file, or until `deadline`."""
    with selectors.DefaultSelector() as selector:
        for pipe in pipes:
            selector.register(pipe, selectors.EVENT_READ)
        while selector.get_map() and time.monotonic() < deadline:
            _read_ready(selector, pipes, deadline - time.monotonic())


def _read_ready(
    selector: selectors.BaseSelector, pipes: dict[IO[bytes], _Capture], wait_s: float
) -> None:
    for key, _events in selector.select(timeout=max(wait_s, 0.0)):
        pipe = key.fileobj
        assert not isinstance(pipe, int)
        chunk = os.read(pipe.fileno(), _READ_CHUNK)
        if chunk:
            pipes[pipe].add(chunk)  # type: ignore[index]
        else:
            selector.unregister(pipe)
