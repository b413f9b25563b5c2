"""What the disturbance monitor (worker/disturbance.py) reads of /proc and /sys.

The readings that cost in proportion to the number of processes:

- CPU counters from /proc/PID/stat (the kernel sums every thread's time: tens of µs a
  process, most of it in the kernel; 3 to 10 ms for ~100 processes on a loaded 2-core box);
- DRM clients: the fds that link to /dev/dri/*, and their fdinfo's `drm-engine-<name>: N ns`
  busy counters (Documentation/gpu/drm-usage-stats.rst; parsed by worker/telemetry/drm_fdinfo.py).

`BoxScan.take` reads both for all processes once, at the start of a run, in a thread while the
engine starts (its CPU is the worker's own, which the monitor counts as ours). At the end the
monitor reads only what it must: our tree and the processes that are new since the start.
Every scan is bounded: processes, fd links and DRM files read are capped. Also here: the
box-wide counters of /proc/stat and the per-CPU sysfs files.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from worker.sysfs import read_text
from worker.telemetry.drm_fdinfo import drm_fds, parse_fdinfo

log = logging.getLogger("orch.worker")

_MAX_PROCESSES = 32768  # a fork bomb must not make the check unbounded
# fd links read per process and per scan; a browser holds thousands, a DRM fd is one of them.
_MAX_FD_LINKS_PER_PROCESS = 1024
_MAX_FD_LINKS = 32768
_MAX_DRM_FILES_PER_PROCESS = 32
_MAX_DRM_FILES = 1024

EngineNs = dict[str, int]  # drm-engine-<name> -> busy ns
# /proc/stat columns that are CPU busy time: user nice system idle iowait irq softirq steal
# guest guest_nice (Documentation/filesystems/proc.rst). guest time is already in user and
# nice; steal is time the hypervisor gave another VM, not a process of this box.
_BUSY_COLUMNS = (0, 1, 2, 5, 6)


@dataclass(frozen=True)
class ProcStat:
    """One /proc/PID/stat: what the monitor needs of a process."""

    comm: str
    ppid: int
    start_ticks: int  # since boot: with the pid, names one process (pids are reused)
    cpu_ticks: int  # utime + stime, every thread


def parse_pid_stat(text: str) -> ProcStat | None:
    """`pid (comm) state ppid ...`: comm may hold spaces and ")", so cut at the last ")"."""
    head, _, rest = text.rpartition(")")
    comm = head.partition("(")[2]
    fields = rest.split()
    # fields[0] is the state (field 3); utime, stime are fields 14, 15, starttime 22.
    if len(fields) < 20:
        return None
    try:
        return ProcStat(comm, int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]))
    except ValueError:
        return None


def parse_cpu_busy(text: str) -> tuple[int, int] | None:
    """(busy ticks of all CPUs, number of CPUs) from /proc/stat."""
    busy = cpus = 0
    found = False
    for line in text.splitlines():
        name, _, values = line.partition(" ")
        if name == "cpu":
            columns = values.split()
            try:
                busy = sum(int(columns[i]) for i in _BUSY_COLUMNS if i < len(columns))
            except ValueError:
                return None
            found = True
        elif name.startswith("cpu") and name[3:].isdigit():
            cpus += 1
    return (busy, max(cpus, 1)) if found else None


@dataclass(frozen=True)
class CpuFiles:
    """The files of one /sys/devices/system/cpu/cpuN that the monitor reads."""

    cur_freq: Path
    max_freq: Path
    core_throttle: Path
    package_throttle: Path
    package_id: Path

    @classmethod
    def of(cls, cpu: Path) -> CpuFiles:
        throttle = cpu / "thermal_throttle"
        return cls(
            cpu / "cpufreq" / "scaling_cur_freq",
            cpu / "cpufreq" / "cpuinfo_max_freq",
            throttle / "core_throttle_count",
            throttle / "package_throttle_count",
            cpu / "topology" / "physical_package_id",
        )


def list_pids(proc: Path) -> list[int]:
    try:
        names = os.listdir(proc)
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()][:_MAX_PROCESSES]


def read_stats(proc: Path, pids: Iterable[int]) -> dict[int, ProcStat]:
    """/proc/PID/stat of the given processes; one that has exited is left out."""
    found = {}
    # A str path, not Path / name / "stat": pathlib's joins were a third of a scan (issue 15).
    base = os.fspath(proc)
    for pid in pids:
        text = read_text(f"{base}/{pid}/stat")
        stat = parse_pid_stat(text) if text else None
        if stat is not None:
            found[pid] = stat
    return found


def descendants(procs: dict[int, ProcStat], roots: set[int]) -> set[int]:
    """`roots` and every process below them, by the parent field."""
    children: dict[int, list[int]] = {}
    for pid, stat in procs.items():
        children.setdefault(stat.ppid, []).append(pid)
    found, todo = set(), [r for r in roots if r in procs]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


@dataclass
class FdBudget:
    """What one scan may still read of fd links and DRM fdinfo files."""

    links: int = _MAX_FD_LINKS
    drm_files: int = _MAX_DRM_FILES


def drm_clients(proc: Path, pid: int, budget: FdBudget) -> dict[Hashable, EngineNs]:
    """The DRM clients `pid` holds: client key (drm-pdev, drm-client-id) -> engine busy ns.
    A client behind several fds (dup, fork) counts once."""
    if budget.links <= 0:
        return {}
    fds, read = drm_fds(proc, pid, min(_MAX_FD_LINKS_PER_PROCESS, budget.links))
    budget.links -= read
    clients: dict[Hashable, EngineNs] = {}
    base = os.fspath(proc)
    for fd in fds[: min(_MAX_DRM_FILES_PER_PROCESS, max(budget.drm_files, 0))]:
        budget.drm_files -= 1
        text = read_text(f"{base}/{pid}/fdinfo/{fd}")
        client = parse_fdinfo(text, fallback_key=(pid, fd)) if text else None
        if client is not None:
            clients.setdefault(client.key, client.engines_ns)
    return clients


@dataclass
class BoxScan:
    """Every process's CPU counters and DRM clients at one moment (the start of a run)."""

    procs: dict[int, ProcStat] = field(default_factory=dict)
    drm: dict[int, dict[Hashable, EngineNs]] = field(default_factory=dict)  # holders only

    @classmethod
    def take(cls, proc: Path, drm: bool) -> BoxScan:
        pids = list_pids(proc)
        scan = cls(read_stats(proc, pids))
        if drm:
            budget = FdBudget()
            for pid in scan.procs:
                clients = drm_clients(proc, pid, budget)
                if clients:
                    scan.drm[pid] = clients
        return scan


def drm_busy_since(
    proc: Path, start: BoxScan, pids: Iterable[int], engines: list[str]
) -> dict[int, dict[str, int]]:
    """pid -> engine -> busy ns its DRM clients added on `engines` since `start` (only those
    that added some). A client the start did not see (a new process or fd) began at 0."""
    before: dict[Hashable, EngineNs] = {}
    for clients in start.drm.values():
        for key, engines_ns in clients.items():
            before.setdefault(key, engines_ns)
    budget = FdBudget()
    found: dict[int, dict[str, int]] = {}
    for pid in sorted(pids):
        busy: dict[str, int] = {}
        for key, engines_ns in drm_clients(proc, pid, budget).items():
            then = before.get(key, {})
            for engine in engines:
                grown = engines_ns.get(engine, 0) - then.get(engine, 0)
                if grown > 0:
                    busy[engine] = busy.get(engine, 0) + grown
        if busy:
            found[pid] = busy
    return found


class StartScan:
    """`BoxScan.take` in the scanner thread (or at once, for deterministic tests)."""

    def __init__(self, proc: Path, drm: bool, background: bool = True) -> None:
        self._proc, self._drm = proc, drm
        self._scan: BoxScan | None = None
        self._done = threading.Event()
        if background:
            _in_scanner_thread(self._run)
        else:
            self._run()

    def _run(self) -> None:
        try:
            self._scan = BoxScan.take(self._proc, self._drm)
        except Exception:  # a bug here must never cost the run
            log.exception("disturbance: scanning the processes failed")
        finally:
            self._done.set()

    def result(self, timeout_s: float) -> BoxScan | None:
        """The scan, or None when it failed or is still running after `timeout_s` (bounded)."""
        if not self._done.wait(timeout_s):
            log.warning("disturbance: the process scan took over %.0f s; ignored", timeout_s)
            return None
        return self._scan


# One long-lived thread per process takes the scans: starting a thread per job made the job
# wait for the new thread to be scheduled (0.4 to 3 ms on a loaded 2-core box); handing work
# to a waiting thread costs a queue put. Keyed by pid: a thread does not survive a fork.
_scanner_lock = threading.Lock()
_scanner: tuple[int, queue.SimpleQueue[Callable[[], None]]] | None = None


def _in_scanner_thread(job: Callable[[], None]) -> None:
    global _scanner
    with _scanner_lock:
        if _scanner is None or _scanner[0] != os.getpid():
            jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
            thread = threading.Thread(
                target=_serve, args=(jobs,), name="disturbance-scan", daemon=True
            )
            thread.start()
            _scanner = (os.getpid(), jobs)
        _scanner[1].put(job)


def _serve(jobs: queue.SimpleQueue[Callable[[], None]]) -> None:
    while True:
        jobs.get()()
