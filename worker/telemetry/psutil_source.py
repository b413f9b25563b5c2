"""psutil: CPU % and RSS of the engine's process tree, system RAM and swap in use.

Reads the real box on every platform (Linux, Windows, macOS), so it ignores `root`.
`cpu_pct` is % of one core (400 = four cores busy), from the tree's user+system CPU time over
wall time; `sys_ram_used_bytes` is total minus available (what the OS could not hand out
without swapping), not psutil's platform-dependent `used`.

On Linux the per-sample reads skip psutil: psutil's virtual_memory() + swap_memory() + a
process's cpu_times() + memory_info() cost ~510 µs of CPU per sample on the development VM,
and at 10 Hz that alone was the whole 0.5%-of-a-core budget. Instead: RSS from
/proc/PID/statm and meminfo from /proc/meminfo (the files psutil reads), and CPU time from the
process's CPU-time clock (clock_gettime on the pid's clock id, as clock_getcpuclockid(3)
builds it): one syscall, no text to format or parse, and nanoseconds instead of /proc/PID/stat's
10 ms ticks, which at 10 Hz would quantize cpu_pct in steps of 10%.
`procfs=False` forces psutil (a test checks both agree).

System RAM and swap are read once a second, not every sample: the kernel builds /proc/meminfo
afresh on each read (~70-180 µs on the development VM, more than everything else here), and
box-wide memory moves over seconds (a model loading, a KV cache filling). Samples in between
carry no `sys_ram_used_bytes` / `swap_used_bytes`; summaries and the series skip them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Hashable
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs installed; calls are checked by tests

from jobs.telemetry import SourceStatus
from worker.sysfs import parse_meminfo, read_text
from worker.telemetry.base import Every, Source, register_source
from worker.telemetry.counters import CounterDeltas, ProcessTree


@register_source("psutil", precedence=50)
class Psutil(Source):
    """The watched process tree's CPU and memory, and the box's RAM and swap."""

    refresh_s = 1.0  # how often the process tree is re-read
    system_every_s = 1.0  # how often system RAM and swap are read

    def __init__(self, root: Path = Path("/"), procfs: bool | None = None) -> None:
        super().__init__(root)
        self.procfs = _linux() if procfs is None else procfs
        # On Linux the tree comes from /proc/PID/task/*/children: psutil's children() reads the
        # stat file of every process on the box, too much to do once a second.
        self._tree = ProcessTree(Path("/proc"), self.refresh_s) if _linux() else None
        self._pid: int | None = None
        self._pids: list[int] = []
        self._pids_refresh = Every(self.refresh_s)
        self._procs: dict[int, psutil.Process] = {}
        self._cpu = CounterDeltas()
        self._last_now: float | None = None
        self.system_memory = Every(self.system_every_s)

    def probe(self) -> SourceStatus:
        how = "/proc read directly" if self.procfs else "psutil calls"
        detail = f"psutil {psutil.__version__} ({how}): engine process tree, RAM, swap"
        return self.status(True, detail)

    def watch(self, pid: int) -> None:
        if pid == self._pid:
            return
        self._pid, self._pids = pid, []
        self._pids_refresh.reset()
        self._procs, self._last_now = {}, None
        self._cpu.reset()
        if self._tree is not None:
            self._tree.watch(pid)

    def sample(self, now: float) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.system_memory.due(now):
            out = self._system_memory()
        if self._pid is None:
            return out
        cpu_s: dict[tuple[str, Hashable], float] = {}
        rss = 0
        for pid in self._tree_pids(now):
            reading = _proc_cpu_rss(pid) if self.procfs else self._psutil_stat(pid)
            if reading is not None:
                cpu_s[("cpu", pid)] = reading[0]
                rss += reading[1]
        increase = self._cpu.update(cpu_s)
        last, self._last_now = self._last_now, now
        if cpu_s:
            out["rss_bytes"] = float(rss)
        if increase is not None and last is not None and now > last and cpu_s:
            out["cpu_pct"] = 100.0 * increase.get("cpu", 0.0) / (now - last)
        return out

    def _system_memory(self) -> dict[str, float]:
        fast = _proc_memory() if self.procfs else None
        if fast is not None:
            return fast
        memory = psutil.virtual_memory()
        return {
            "sys_ram_used_bytes": float(memory.total - memory.available),
            "swap_used_bytes": float(psutil.swap_memory().used),
        }

    def _psutil_stat(self, pid: int) -> tuple[float, int] | None:
        """(user+system CPU seconds, RSS bytes) of one process, through psutil."""
        proc = self._process(pid)
        if proc is None:
            return None
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                return times.user + times.system, int(proc.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._procs.pop(pid, None)
            return None

    def _tree_pids(self, now: float) -> list[int]:
        if self._tree is not None:
            return self._tree.pids(now)
        assert self._pid is not None
        if self._pids_refresh.due(now):
            root = self._process(self._pid)
            try:
                kids = [] if root is None else root.children(recursive=True)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                kids = []
            self._pids = ([self._pid] if root is not None else []) + [p.pid for p in kids]
        return self._pids

    def _process(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = self._procs[pid] = psutil.Process(pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return None
        return proc


def _linux() -> bool:
    return sys.platform.startswith("linux") and Path("/proc/self/task").is_dir()


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _proc_memory() -> dict[str, float] | None:
    """System RAM and swap in use from /proc/meminfo (kB), as psutil computes them."""
    text = read_text(Path("/proc/meminfo"))
    if text is None:
        return None
    mem = parse_meminfo(text)
    if not {"MemTotal", "MemAvailable", "SwapTotal", "SwapFree"} <= mem.keys():
        return None
    return {
        "sys_ram_used_bytes": float(mem["MemTotal"] - mem["MemAvailable"]),
        "swap_used_bytes": float(mem["SwapTotal"] - mem["SwapFree"]),
    }


def _process_cpu_clock(pid: int) -> int:
    """The clock id of a process's CPU time: MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED), which is
    what glibc's clock_getcpuclockid(pid) returns on Linux (any process, no permission check)."""
    return ((~pid) << 3) | 2


def _proc_cpu_rss(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, user+system, of the whole process; RSS bytes), or None once it is gone."""
    try:
        cpu_s = time.clock_gettime(_process_cpu_clock(pid))
    except OSError:  # EINVAL: no such process
        return None
    statm = read_text(Path(f"/proc/{pid}/statm"))  # size resident shared text lib data dt (pages)
    fields = statm.split() if statm else []
    if len(fields) < 2:
        return None
    return cpu_s, int(fields[1]) * _PAGE_BYTES
