"""psutil on this box: a real child process, sampled by a real sampler thread."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.telemetry import PhaseWindow
from worker.telemetry import Sampler
from worker.telemetry.psutil_source import Psutil

# Holds ~200 MB and keeps one core busy for `seconds`.
_BUSY = """
import sys, time
ballast = bytearray(200 * 1024 * 1024)
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
"""
# Does nothing itself: starts the busy child and waits (the engine-with-a-runner shape).
_PARENT = """
import subprocess, sys
subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], check=True)
"""


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("procfs", [True, False], ids=["procfs", "psutil-calls"])
def test_real_child_process_cpu_and_rss(spawn: list[subprocess.Popen[bytes]], procfs: bool) -> None:
    if procfs and not Path("/proc/self/stat").exists():
        pytest.skip("no /proc on this platform: psutil calls only")
    sampler = Sampler([Psutil(procfs=procfs)], interval_s=0.05)
    with sampler:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", _BUSY, "1.0"])
        spawn.append(proc)
        sampler.watch(proc.pid)  # what RunTarget.on_process does
        proc.wait(timeout=30)
        half = time.monotonic()
        time.sleep(0.2)
    phases = sampler.to_relative(
        [
            PhaseWindow(phase="prefill", start_s=start, end_s=start + (half - start) / 2),
            PhaseWindow(phase="decode", start_s=start + (half - start) / 2, end_s=half),
        ]
    )
    telemetry = sampler.summarize(phases)
    assert telemetry.samples >= 10
    assert [s.name for s in telemetry.sources] == ["psutil"]
    for phase in telemetry.phases:
        cpu, rss = phase.metrics["cpu_pct"], phase.metrics["rss_bytes"]
        assert cpu.peak is not None and cpu.mean is not None
        assert cpu.peak >= cpu.mean > 0
        assert rss.peak is not None and rss.mean is not None
        assert rss.peak >= rss.mean > 0
        assert rss.baseline is None  # the process did not exist at the baseline
        ram = phase.metrics["sys_ram_used_bytes"]
        assert ram.baseline is not None and ram.baseline > 0
        assert phase.energy_j is None  # no power source on this list
    # The busy child holds 200 MB at its peak.
    assert max(p.metrics["rss_bytes"].peak or 0 for p in telemetry.phases) > 150e6
    series = telemetry.series
    assert {"t_s", "cpu_pct", "rss_bytes", "sys_ram_used_bytes", "swap_used_bytes"} <= set(series)
    assert len({len(values) for values in series.values()}) == 1
    assert series["rss_bytes"][0] is None  # baseline: nothing watched yet
    assert any(v is None for v in series["rss_bytes"][-3:])  # the process has exited
    assert telemetry.sampler_cpu_s >= 0
    assert telemetry.energy_metric is None


def test_follows_the_children_of_the_watched_process(spawn: list[subprocess.Popen[bytes]]) -> None:
    sampler = Sampler([Psutil()], interval_s=0.05)
    with sampler:
        proc = subprocess.Popen([sys.executable, "-c", _PARENT, _BUSY, "1.5"])
        spawn.append(proc)
        sampler.watch(proc.pid)
        proc.wait(timeout=30)
    (run,) = sampler.summarize().phases
    # The parent alone is a small, idle interpreter: only its child holds 200 MB.
    assert (run.metrics["rss_bytes"].peak or 0) > 150e6
    assert (run.metrics["cpu_pct"].mean or 0) > 0


def test_watching_a_process_that_is_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    source = Psutil()
    assert source.probe().available
    source.watch(proc.pid)
    out = source.sample(time.monotonic())
    assert set(out) == {"sys_ram_used_bytes", "swap_used_bytes"}


def test_procfs_reads_agree_with_psutil(spawn: list[subprocess.Popen[bytes]]) -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc on this platform")
    proc = subprocess.Popen([sys.executable, "-c", _BUSY, "3"])
    spawn.append(proc)
    fast, portable = Psutil(procfs=True), Psutil(procfs=False)
    for source in (fast, portable):
        source.system_memory.period_s = 0.0  # system memory on every sample, to compare
        source.watch(proc.pid)
    time.sleep(1.0)  # past the 200 MB allocation
    start = time.monotonic()
    fast.sample(start), portable.sample(start)
    time.sleep(0.5)
    end = time.monotonic()
    a, b = fast.sample(end), portable.sample(end)
    assert a["rss_bytes"] == pytest.approx(b["rss_bytes"], rel=0.05)
    assert a["sys_ram_used_bytes"] == pytest.approx(b["sys_ram_used_bytes"], rel=0.05)
    assert a["swap_used_bytes"] == pytest.approx(b["swap_used_bytes"], abs=64 * 2**20)
    # Both count the same clock ticks of a busy loop, read microseconds apart.
    assert a["cpu_pct"] > 0 and b["cpu_pct"] > 0
    assert abs(a["cpu_pct"] - b["cpu_pct"]) <= 0.25 * max(a["cpu_pct"], b["cpu_pct"]) + 5


def test_system_memory_is_read_once_a_second() -> None:
    source = Psutil()
    source.probe()
    reads = [source.sample(t) for t in (10.0, 10.1, 10.5, 11.0, 11.2)]
    assert ["sys_ram_used_bytes" in r for r in reads] == [True, False, False, True, False]
    assert all(("swap_used_bytes" in r) == ("sys_ram_used_bytes" in r) for r in reads)
