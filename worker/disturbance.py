"""What else used the box during a measured run: pyperf's system checks, measured live.

A tg figure taken while a compiler or a browser used half the cores is not the engine's speed,
and `orch compare` once called q4 "12.0x faster" than q8 from such samples. Around every run
the worker reads counters at the start and at the end:

- CPU time used by processes other than this worker and the engine tree it started: the box's
  busy time from /proc/stat minus the CPU time of our own process tree. /proc/stat counts
  every process, including short-lived ones that started and ended during the run (a `make
  -j` of many small compilers), which a scan of /proc/PID/stat at the end would miss;
- the others that used most of it, named only when the others' share is over the owner's
  limit (10% where none is set): a scan of every /proc/PID/stat at the end against the one
  taken at the start;
- the highest 1-minute load average, the lowest current core frequency against the cores'
  rated maximum (where cpufreq is readable), both read at the start, when the engine starts
  and at the end;
- the increase of the x86 thermal throttle counters (cumulative, so start and end are exact);
- other processes on the GPU: NVIDIA compute processes (NVML) at the end, and, where /dev/dri
  exists, processes whose DRM fdinfo busy time grew during the run on one of the owner's
  `gpu_engines` (`compute` by default: amdgpu's gfx engine is a desktop compositor's).

Cost (issue 15): the scan of every process (CPU counters, DRM fds) runs once, at the start, in
a thread while the engine starts (worker/disturbance_scan.py); the end reads our own tree and
the processes new since the start, /proc/stat, and every process again only when a run turns
out disturbed. The start scan is taken a few ms after the start counters, so a process of
ours that was already alive (a warm server) may have a few ms of its CPU counted as others'.
A pid reused during the run by a new process of ours is not seen (pids wrap after ~4 million
forks by default).

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

from jobs.result import Disturbance
from worker.config import DisturbanceConfig
from worker.disturbance_scan import (
    BoxScan,
    CpuFiles,
    ProcStat,
    StartScan,
    descendants,
    drm_busy_since,
    list_pids,
    parse_cpu_busy,
    parse_pid_stat,
    read_stats,
)
from worker.sysfs import read_int, read_text
from worker.telemetry.nvml import gpu_processes

__all__ = ["DisturbanceMonitor", "ProcStat", "judge", "parse_cpu_busy", "parse_pid_stat"]

log = logging.getLogger("orch.worker")

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_TOP_OTHERS = 5
_MIN_SHOWN_S = 0.05  # a process below this is noise, not a culprit
# Culprits are named above the owner's limit; where the owner judges no CPU share, above this.
_NAME_ABOVE_FRACTION = 0.1
# The start scan normally ends within milliseconds; past this its figures are missing.
_START_SCAN_WAIT_S = 10.0


@dataclass
class Snapshot:
    """The counters read at one moment."""

    at: float
    busy_ticks: int | None = None
    cpus: int = 1
    procs: dict[int, ProcStat] = field(default_factory=dict)  # those read at that moment
    reaped_s: float = 0.0  # CPU of this worker's children that ended and were waited for
    throttle: int | None = None


class DisturbanceMonitor:
    """Context manager around one measured run; `record` holds what it saw (None: off).

    `background=False` takes the start scan at once instead of in a thread (tests that rewrite
    a fixture tree right after the start need it finished)."""

    def __init__(
        self,
        config: DisturbanceConfig,
        root: Path = Path("/"),
        *,
        own_pid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        reaped_cpu_s: Callable[[], float] | None = None,
        gpu: Callable[[], list[tuple[int, int | None]] | None] = gpu_processes,
        background: bool = True,
    ) -> None:
        self.config = config
        self.proc = root / "proc"
        self.cpu_dir = root / "sys" / "devices" / "system" / "cpu"
        # No DRM device node, no DRM client to find: spend nothing on fds (most boxes).
        self.drm = (root / "dev" / "dri").is_dir()
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self.clock = clock
        self.reaped_cpu_s = reaped_cpu_s or _reaped_children_s
        self.gpu = gpu
        self.background = background
        self.record: Disturbance | None = None
        self._watched: set[int] = set()
        self._start: Snapshot | None = None
        self._scan: StartScan | None = None
        self._started_ticks: int | None = None  # the start, in ticks since boot
        self._load: list[float] = []
        self._freq_min_khz: list[int] = []
        self._freq_max_khz: int | None = None
        self._cpus: list[CpuFiles] | None = None
        self._sources: set[str] = set()

    def __enter__(self) -> DisturbanceMonitor:
        try:
            self._start = self._snapshot()
            self._started_ticks = _uptime_ticks(self.proc)
            self._scan = StartScan(self.proc, self.drm, self.background)
        except Exception:  # a bug here must never cost the run
            log.exception("disturbance: reading the start counters failed")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._start is None or self._scan is None:
            return
        try:
            end = self._snapshot()
            self.record = self._finish(self._start, end, self._scan.result(_START_SCAN_WAIT_S))
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
        """The box-wide counters and this worker's own /proc/PID/stat (the rest of our tree
        comes from the start scan and, at the end, from `_end_procs`)."""
        snap = Snapshot(at=self.clock(), procs=read_stats(self.proc, [self.own_pid]))
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
        for cpu in self._cpu_files():
            cur = read_int(cpu.cur_freq)
            top = read_int(cpu.max_freq)
            current += [cur] if cur else []
            rated += [top] if top else []
        if current:
            self._freq_min_khz.append(min(current))
            self._sources.add("cpufreq")
        if rated:
            self._freq_max_khz = max(rated)

    def _cpu_files(self) -> list[CpuFiles]:
        """Listed and joined once per run: the gauges are read three times, and on a 32-core
        box the path joins alone were a millisecond each time (issue 15)."""
        if self._cpus is None:
            try:
                names = sorted(os.listdir(self.cpu_dir))
            except OSError:
                names = []
            dirs = [self.cpu_dir / n for n in names if n.startswith("cpu") and n[3:].isdigit()]
            self._cpus = [CpuFiles.of(cpu) for cpu in dirs]
        return self._cpus

    def _throttle_count(self) -> int | None:
        """Core throttle events summed over CPUs, plus package events once per package (every
        CPU of a package shows its package's count: arch/x86/kernel/cpu/mce/therm_throt.c)."""
        core = 0
        packages: dict[int | None, int] = {}
        found = False
        for cpu in self._cpu_files():
            count = read_int(cpu.core_throttle)
            if count is not None:
                core += count
                found = True
            package = read_int(cpu.package_throttle)
            if package is not None:
                key = read_int(cpu.package_id)
                packages[key] = max(packages.get(key, 0), package)
                found = True
        if not found:
            return None
        self._sources.add("thermal_throttle")
        return core + sum(packages.values())

    # -- the record ------------------------------------------------------------------------

    def _finish(self, start: Snapshot, end: Snapshot, scan: BoxScan | None) -> Disturbance:
        duration = max(end.at - start.at, 0.0)
        roots = {self.own_pid, *self._watched}
        ours = roots  # without the start scan, at least the worker and the engine are known
        other_s = fraction = None
        top: list[str] = []
        drm_others: list[str] = []
        if scan is not None and start.procs:
            box = self._before_the_run(scan)
            # This worker's own counters, read at the start itself, win over the scan's.
            start = replace(start, procs={**box.procs, **start.procs})
            names = list_pids(self.proc)
            new = {pid for pid in names if pid not in start.procs}
            ours_then = descendants(start.procs, roots)
            # Our tree now: what was ours and lives, the roots, and the new processes (one of
            # ours started during the run is new); every other process is left unread.
            end.procs.update(read_stats(self.proc, (new | ours_then | roots) - end.procs.keys()))
            ours = ours_then | descendants(end.procs, roots)
            if start.busy_ticks is not None and end.busy_ticks is not None:
                busy_s = (end.busy_ticks - start.busy_ticks) / _TICKS_PER_S
                own_s = _tree_cpu_s(start, end, ours) + max(end.reaped_s - start.reaped_s, 0.0)
                # /proc/stat counts in ticks and processes are sampled a moment apart: clamp.
                other_s = round(max(busy_s - own_s, 0.0), 3)
                if duration > 0:
                    fraction = round(min(other_s / (duration * end.cpus), 1.0), 4)
            if self._worth_naming(other_s, fraction):
                rest = [pid for pid in names if pid not in end.procs]
                everyone = Snapshot(end.at, procs={**end.procs, **read_stats(self.proc, rest)})
                top = _top_others(start, everyone, ours)
            if self.drm:
                # Read again: the start's DRM holders and the processes new since (one alive
                # at the start without a DRM file that opened one during the run is not seen).
                holders = (box.drm.keys() & set(names)) | new
                drm_others = self._drm_others(box, holders - ours, end.procs)
        record = Disturbance(
            duration_s=round(duration, 3),
            logical_cpus=end.cpus,
            other_cpu_s=other_s,
            other_cpu_fraction=fraction,
            top_others=top,
            load_avg_1m_max=max(self._load) if self._load else None,
            cpu_freq_mhz_min=min(self._freq_min_khz) / 1000 if self._freq_min_khz else None,
            cpu_freq_mhz_max=self._freq_max_khz / 1000 if self._freq_max_khz else None,
            thermal_throttle_events=(
                max(end.throttle - start.throttle, 0)
                if end.throttle is not None and start.throttle is not None
                else None
            ),
            gpu_other_processes=self._nvml_others(end, ours) + drm_others,
        )
        return judge(record, self.config, sorted(self._sources))

    def _before_the_run(self, scan: BoxScan) -> BoxScan:
        """The start scan is a moment late: a process it saw that started after the start (the
        engine, started while the scan ran) is new, and all of its CPU and GPU time is the
        run's."""
        began = self._started_ticks
        if began is None:
            return scan
        procs = {pid: stat for pid, stat in scan.procs.items() if stat.start_ticks < began}
        return BoxScan(procs, {pid: c for pid, c in scan.drm.items() if pid in procs})

    def _worth_naming(self, other_s: float | None, fraction: float | None) -> bool:
        """Naming reads every process again: only over the limit, and only when the others
        used enough that one of them can reach _MIN_SHOWN_S (a 20 ms run is judged on 10 ms
        ticks, and one tick of another process is over 10% of 2 cores)."""
        limit = self.config.max_other_cpu_fraction
        limit = _NAME_ABOVE_FRACTION if limit is None else limit
        if other_s is None or fraction is None:
            return False
        return fraction > limit and other_s >= _MIN_SHOWN_S

    def _nvml_others(self, end: Snapshot, ours: set[int]) -> list[str]:
        found = self.gpu()
        if found is None:
            return []
        self._sources.add("nvml")
        out = []
        for pid, used in found:
            if pid in ours:
                continue
            stat = end.procs.get(pid) or read_stats(self.proc, [pid]).get(pid)
            name = f"{stat.comm} (pid {pid})" if stat else f"pid {pid}"
            out.append(name + (f": {used / 2**20:.0f} MiB" if used is not None else ""))
        return out

    def _drm_others(
        self, box: BoxScan, pids: set[int], end_procs: dict[int, ProcStat]
    ) -> list[str]:
        """Processes not ours busy on a counted DRM engine during the run, e.g.
        `llama-server (pid 5100): compute 2.41 s`."""
        self._sources.add("DRM fdinfo")
        out = []
        for pid, busy in drm_busy_since(self.proc, box, pids, self.config.gpu_engines).items():
            stat = end_procs.get(pid) or box.procs.get(pid)
            name = f"{stat.comm} (pid {pid})" if stat else f"pid {pid}"
            used = ", ".join(f"{engine} {ns / 1e9:.2f} s" for engine, ns in busy.items())
            out.append(f"{name}: {used}")
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


def _uptime_ticks(proc: Path) -> int | None:
    """Now, in the clock of /proc/PID/stat's starttime (ticks since boot): /proc/uptime."""
    text = read_text(proc / "uptime")
    try:
        return int(float(text.split()[0]) * _TICKS_PER_S) if text else None
    except (IndexError, ValueError):
        return None


def _reaped_children_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
