"""What else used the box during a measured run: pyperf's system checks, measured live.

A tg figure taken while a compiler or a browser used half the cores is not the engine's speed,
and `orch compare` once called q4 "12.0x faster" than q8 from such samples. Around every run
the worker reads counters at the start and at the end (no thread of its own):

- CPU time used by processes other than this worker and the engine tree it started: the box's
  busy time from /proc/stat minus the CPU time of our own process tree. /proc/stat counts
  every process, including short-lived ones that started and ended during the run (a `make
  -j` of many small compilers), which a scan of /proc/PID/stat at the end would miss;
- the others that used most of it, from two scans of /proc/PID/stat (start and end; about
  30 µs a process, both outside the measured window);
- the highest 1-minute load average, the lowest current core frequency against the cores'
  rated maximum (where cpufreq is readable), both read at the start, when the engine starts
  and at the end;
- the increase of the x86 thermal throttle counters (cumulative, so start and end are exact);
- other processes on an NVIDIA GPU (NVML's running processes) at the end.

The owner's thresholds (`disturbance:` in worker.yaml, `DisturbanceConfig`) decide whether the
run is `disturbed`; reports then show its cells flagged and draw no faster/slower verdict.
Nothing here fails a job: an unreadable counter is a missing figure.

Example::

    with DisturbanceMonitor(config.disturbance, root=config.facts_root) as monitor:
        engine.run(job, replace(target, on_process=monitor.watch))
    result.disturbance = monitor.record
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from jobs.result import Disturbance
from worker.config import DisturbanceConfig
from worker.sysfs import read_int, read_text
from worker.telemetry.nvml import gpu_processes

log = logging.getLogger("orch.worker")

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# /proc/stat columns that are CPU busy time: user nice system idle iowait irq softirq steal
# guest guest_nice (Documentation/filesystems/proc.rst). guest time is already in user and
# nice; steal is time the hypervisor gave another VM, not a process of this box.
_BUSY_COLUMNS = (0, 1, 2, 5, 6)
_TOP_OTHERS = 5
_MIN_SHOWN_S = 0.05  # a process below this is noise, not a culprit


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


def scan_processes(proc: Path) -> dict[int, ProcStat]:
    try:
        names = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return {}
    found = {}
    for name in names:
        text = read_text(proc / name / "stat")
        stat = parse_pid_stat(text) if text else None
        if stat is not None:
            found[int(name)] = stat
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
class Snapshot:
    """The counters read at one moment."""

    at: float
    busy_ticks: int | None = None
    cpus: int = 1
    procs: dict[int, ProcStat] = field(default_factory=dict)
    reaped_s: float = 0.0  # CPU of this worker's children that ended and were waited for
    throttle: int | None = None


class DisturbanceMonitor:
    """Context manager around one measured run; `record` holds what it saw (None: off)."""

    def __init__(
        self,
        config: DisturbanceConfig,
        root: Path = Path("/"),
        *,
        own_pid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        reaped_cpu_s: Callable[[], float] | None = None,
        gpu: Callable[[], list[tuple[int, int | None]] | None] = gpu_processes,
    ) -> None:
        self.config = config
        self.proc = root / "proc"
        self.cpu_dir = root / "sys" / "devices" / "system" / "cpu"
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self.clock = clock
        self.reaped_cpu_s = reaped_cpu_s or _reaped_children_s
        self.gpu = gpu
        self.record: Disturbance | None = None
        self._watched: set[int] = set()
        self._start: Snapshot | None = None
        self._load: list[float] = []
        self._freq_min_khz: list[int] = []
        self._freq_max_khz: int | None = None
        self._sources: set[str] = set()

    def __enter__(self) -> DisturbanceMonitor:
        try:
            self._start = self._snapshot()
        except Exception:  # a bug here must never cost the run
            log.exception("disturbance: reading the start counters failed")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._start is None:
            return
        try:
            self.record = self._finish(self._start, self._snapshot())
        except Exception:
            log.exception("disturbance: reading the end counters failed")

    def watch(self, pid: int) -> None:
        """The engine's process (RunTarget.on_process): its tree is ours, not another's."""
        self._watched.add(pid)
        if self._start is not None:
            try:
                self._read_gauges()  # the engine is starting: load and clocks now
            except Exception:
                log.exception("disturbance: reading load and clocks failed")

    # -- reading ---------------------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        snap = Snapshot(at=self.clock(), procs=scan_processes(self.proc))
        text = read_text(self.proc / "stat")
        parsed = parse_cpu_busy(text) if text else None
        if parsed is not None:
            snap.busy_ticks, snap.cpus = parsed
            self._sources.add("/proc/stat")
        if snap.procs:
            self._sources.add("/proc/PID/stat")
        snap.reaped_s = self.reaped_cpu_s()
        snap.throttle = self._throttle_count()
        self._read_gauges()
        return snap

    def _read_gauges(self) -> None:
        text = read_text(self.proc / "loadavg")
        words = text.split() if text else []
        try:
            self._load.append(float(words[0]))
            self._sources.add("/proc/loadavg")
        except (IndexError, ValueError):
            pass
        current, rated = [], []
        for cpu in self._cpu_dirs():
            cur = read_int(cpu / "cpufreq" / "scaling_cur_freq")
            top = read_int(cpu / "cpufreq" / "cpuinfo_max_freq")
            current += [cur] if cur else []
            rated += [top] if top else []
        if current:
            self._freq_min_khz.append(min(current))
            self._sources.add("cpufreq")
        if rated:
            self._freq_max_khz = max(rated)

    def _cpu_dirs(self) -> list[Path]:
        try:
            names = os.listdir(self.cpu_dir)
        except OSError:
            return []
        return [self.cpu_dir / n for n in sorted(names) if n.startswith("cpu") and n[3:].isdigit()]

    def _throttle_count(self) -> int | None:
        """Core throttle events summed over CPUs, plus package events once per package (every
        CPU of a package shows its package's count: arch/x86/kernel/cpu/mce/therm_throt.c)."""
        core = 0
        packages: dict[int | None, int] = {}
        found = False
        for cpu in self._cpu_dirs():
            folder = cpu / "thermal_throttle"
            count = read_int(folder / "core_throttle_count")
            if count is not None:
                core += count
                found = True
            package = read_int(folder / "package_throttle_count")
            if package is not None:
                key = read_int(cpu / "topology" / "physical_package_id")
                packages[key] = max(packages.get(key, 0), package)
                found = True
        if not found:
            return None
        self._sources.add("thermal_throttle")
        return core + sum(packages.values())

    # -- the record ------------------------------------------------------------------------

    def _finish(self, start: Snapshot, end: Snapshot) -> Disturbance:
        duration = max(end.at - start.at, 0.0)
        ours = descendants(start.procs, {self.own_pid, *self._watched}) | descendants(
            end.procs, {self.own_pid, *self._watched}
        )
        other_s = fraction = None
        if start.busy_ticks is not None and end.busy_ticks is not None and start.procs:
            busy_s = (end.busy_ticks - start.busy_ticks) / _TICKS_PER_S
            own_s = _tree_cpu_s(start, end, ours) + max(end.reaped_s - start.reaped_s, 0.0)
            # /proc/stat counts in ticks and processes are sampled a moment apart: clamp.
            other_s = round(max(busy_s - own_s, 0.0), 3)
            if duration > 0:
                fraction = round(min(other_s / (duration * end.cpus), 1.0), 4)
        record = Disturbance(
            duration_s=round(duration, 3),
            logical_cpus=end.cpus,
            other_cpu_s=other_s,
            other_cpu_fraction=fraction,
            top_others=_top_others(start, end, ours),
            load_avg_1m_max=max(self._load) if self._load else None,
            cpu_freq_mhz_min=min(self._freq_min_khz) / 1000 if self._freq_min_khz else None,
            cpu_freq_mhz_max=self._freq_max_khz / 1000 if self._freq_max_khz else None,
            thermal_throttle_events=(
                max(end.throttle - start.throttle, 0)
                if end.throttle is not None and start.throttle is not None
                else None
            ),
            gpu_other_processes=self._gpu_others(end, ours),
        )
        return judge(record, self.config, sorted(self._sources))

    def _gpu_others(self, end: Snapshot, ours: set[int]) -> list[str]:
        found = self.gpu()
        if found is None:
            return []
        self._sources.add("nvml")
        out = []
        for pid, used in found:
            if pid in ours:
                continue
            stat = end.procs.get(pid)
            name = f"{stat.comm} (pid {pid})" if stat else f"pid {pid}"
            out.append(name + (f": {used / 2**20:.0f} MiB" if used is not None else ""))
        return out


def judge(record: Disturbance, config: DisturbanceConfig, sources: list[str]) -> Disturbance:
    """The owner's thresholds applied to what was measured: `disturbed` and why."""
    reasons = []
    thresholds: dict[str, float] = {}
    if config.max_other_cpu_fraction is not None:
        thresholds["max_other_cpu_fraction"] = config.max_other_cpu_fraction
        if (
            record.other_cpu_fraction is not None
            and record.other_cpu_fraction > config.max_other_cpu_fraction
        ):
            culprits = f" ({', '.join(record.top_others[:3])})" if record.top_others else ""
            reasons.append(
                f"other processes used {record.other_cpu_fraction:.0%} of the CPUs "
                f"(limit {config.max_other_cpu_fraction:.0%}){culprits}"
            )
    if config.max_load_avg is not None:
        thresholds["max_load_avg"] = config.max_load_avg
        if record.load_avg_1m_max is not None and record.load_avg_1m_max > config.max_load_avg:
            reasons.append(
                f"1-minute load average reached {record.load_avg_1m_max:.2f} "
                f"(limit {config.max_load_avg:g})"
            )
    if not config.allow_throttling and record.thermal_throttle_events:
        reasons.append(f"the CPU throttled {record.thermal_throttle_events} time(s) (thermal)")
    if not config.allow_other_gpu_processes and record.gpu_other_processes:
        reasons.append(f"other processes on the GPU: {', '.join(record.gpu_other_processes)}")
    return record.model_copy(
        update={
            "thresholds": thresholds,
            "disturbed": bool(reasons),
            "reasons": reasons,
            "sources": sources,
        }
    )


def _same(a: ProcStat | None, b: ProcStat) -> bool:
    return a is not None and a.start_ticks == b.start_ticks


def _cpu_delta_s(start: Snapshot, end: Snapshot, pid: int) -> float:
    """CPU a living process used since the start (all of it when it started since)."""
    now = end.procs[pid]
    before = start.procs.get(pid)
    used = now.cpu_ticks - before.cpu_ticks if _same(before, now) and before else now.cpu_ticks
    return max(used, 0) / _TICKS_PER_S


def _tree_cpu_s(start: Snapshot, end: Snapshot, ours: set[int]) -> float:
    """CPU of our tree during the run. A process of ours that ended was counted in full by
    RUSAGE_CHILDREN when it was reaped, so what it had used before the start comes off."""
    total = sum(_cpu_delta_s(start, end, pid) for pid in ours if pid in end.procs)
    for pid in ours:
        before = start.procs.get(pid)
        if before is not None and not _same(end.procs.get(pid), before):
            total -= before.cpu_ticks / _TICKS_PER_S
    return total


def _top_others(start: Snapshot, end: Snapshot, ours: set[int]) -> list[str]:
    """The others that used most CPU during the run, e.g. `stress-ng (pid 812): 41.2 s`.
    Only processes alive at the end can be named; /proc/stat counted the rest."""
    if not start.procs:
        return []
    used = [
        (_cpu_delta_s(start, end, pid), pid) for pid in end.procs if pid not in ours
    ]  # fmt: skip
    used.sort(reverse=True)
    return [
        f"{end.procs[pid].comm} (pid {pid}): {cpu_s:.1f} s"
        for cpu_s, pid in used[:_TOP_OTHERS]
        if cpu_s >= _MIN_SHOWN_S
    ]


def _reaped_children_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
