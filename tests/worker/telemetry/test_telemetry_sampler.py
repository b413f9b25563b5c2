"""The sampler with a fake clock and scripted sources: phases, energy, series, failures."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest

from jobs.telemetry import PhaseWindow, SourceStatus, Telemetry
from worker.telemetry import Sampler
from worker.telemetry.amdgpu import AmdGpu
from worker.telemetry.base import Every, Source
from worker.telemetry.drm_fdinfo import DrmFdinfo
from worker.telemetry.rapl import Rapl
from worker.telemetry.summary import Sample, summarize_phase


class Scripted(Source):
    """A source whose readings are a function of the sampler's clock."""

    def __init__(
        self,
        name: str,
        read: Callable[[float], dict[str, float]],
        available: bool = True,
        includes_cpu: bool | None = None,
    ) -> None:
        super().__init__()
        self.name = name  # type: ignore[misc]  # registered sources get it from the registry
        self.source_name = name
        self.read = read
        self.available = available
        self.includes_cpu = includes_cpu
        self.watched: list[int] = []
        self.closed = False

    def probe(self) -> SourceStatus:
        detail = "scripted" if self.available else "not on this box"
        return SourceStatus(
            name=self.source_name,
            available=self.available,
            detail=detail,
            power_includes_cpu=self.includes_cpu,
        )

    def sample(self, now: float) -> dict[str, float]:
        return self.read(now)

    def watch(self, pid: int) -> None:
        self.watched.append(pid)

    def close(self) -> None:
        self.closed = True


# Readings at t (since t0 = 1000): 20 W and 50 % busy until t = 1.0, then 60 W and 100 %;
# VRAM grows 200 MB per half second from 100 MB at the baseline.
def _script(clock: Any) -> Callable[[float], dict[str, float]]:
    def read(now: float) -> dict[str, float]:
        t = round(now - 1000.0, 6)
        if t == 0:
            return {"vram_used_bytes": 100e6, "power_w": 10.0}
        return {
            "vram_used_bytes": 100e6 + 400e6 * t,
            "power_w": 20.0 if t <= 1.0 else 60.0,
            "gpu_busy_pct": 50.0 if t <= 1.0 else 100.0,
        }

    return read


def _run(clock: Any, sources: list[Source], until_s: float = 2.0, step_s: float = 0.5) -> Sampler:
    sampler = Sampler(sources, interval_s=step_s, clock=clock, threaded=False)
    with sampler:
        for _ in range(round(until_s / step_s) - 1):
            clock.advance(step_s)
            sampler.tick()
        clock.advance(step_s)  # __exit__ takes the last sample
    return sampler


def test_phases_split_metrics_and_energy_exactly(clock: Any) -> None:
    sampler = _run(clock, [Scripted("gpu", _script(clock))])
    phases = [
        PhaseWindow(phase="prefill", start_s=0.0, end_s=1.0, tokens=100),
        PhaseWindow(phase="decode", start_s=1.0, end_s=2.0, tokens=50),
    ]
    telemetry = sampler.summarize(phases)
    assert telemetry.samples == 5  # baseline + 3 ticks + the last one
    assert telemetry.energy_metric == "power_w"
    prefill, decode = telemetry.phases
    assert prefill.metrics["power_w"].mean == 20.0
    assert prefill.metrics["gpu_busy_pct"].model_dump() == {
        "mean": 50.0, "peak": 50.0, "baseline": None, "samples": 2
    }  # fmt: skip
    assert prefill.metrics["vram_used_bytes"].model_dump() == {
        "mean": 400e6, "peak": 500e6, "baseline": 100e6, "samples": 2
    }  # fmt: skip
    assert prefill.energy_j == pytest.approx(20.0)  # 20 W for 1 s
    assert prefill.j_per_token == pytest.approx(0.2)
    assert prefill.tokens_per_s_per_w == pytest.approx(5.0)  # 100 tok/s at 20 W
    assert decode.energy_j == pytest.approx(60.0)
    assert decode.j_per_token == pytest.approx(1.2)
    assert decode.tokens_per_s_per_w == pytest.approx(50 / 60)
    assert decode.metrics["vram_used_bytes"].peak == 900e6
    assert decode.metrics["vram_used_bytes"].baseline == 100e6  # the run's baseline


def test_no_phases_means_one_run_phase(clock: Any) -> None:
    telemetry = _run(clock, [Scripted("gpu", _script(clock))]).summarize()
    (run,) = telemetry.phases
    assert (run.phase, run.start_s, run.end_s, run.tokens) == ("run", 0.0, 2.0, 0)
    assert run.energy_j == pytest.approx(80.0)
    assert run.j_per_token is None and run.tokens_per_s_per_w is None


def test_windows_off_the_sample_grid_are_weighted_by_overlap(clock: Any) -> None:
    sampler = _run(clock, [Scripted("gpu", _script(clock))])
    across, inside, instant = sampler.summarize(
        [
            PhaseWindow(phase="decode", start_s=0.75, end_s=1.25, tokens=10),
            PhaseWindow(phase="decode", start_s=1.6, end_s=1.7, tokens=1),
            PhaseWindow(phase="prefill", start_s=1.2, end_s=1.2),
        ]
    ).phases
    assert across.metrics["power_w"].mean == pytest.approx(40.0)  # 0.25 s at 20, 0.25 s at 60
    assert across.energy_j == pytest.approx(20.0)
    assert across.metrics["power_w"].peak == 60.0
    assert inside.metrics["power_w"].samples == 1  # shorter than an interval: still covered
    assert inside.energy_j is None  # ... but too short to attribute energy to
    assert instant.metrics["gpu_busy_pct"].mean == 100.0
    assert instant.energy_j is None


def test_to_relative_uses_the_baseline_time(clock: Any) -> None:
    sampler = _run(clock, [Scripted("gpu", _script(clock))])
    (window,) = sampler.to_relative(
        [PhaseWindow(phase="decode", start_s=1000.5, end_s=1001.5, tokens=7)]
    )
    assert (window.start_s, window.end_s, window.tokens) == (0.5, 1.5, 7)


def test_power_precedence_and_gaps(clock: Any) -> None:
    rapl_only = Scripted("rapl", lambda now: {"package_power_w": 30.0})
    telemetry = _run(clock, [rapl_only]).summarize()
    assert telemetry.energy_metric == "package_power_w"
    assert telemetry.phases[0].energy_j == pytest.approx(60.0)
    # A GPU power reading beats RAPL; the first source to give a metric keeps it.
    first = Scripted("nvml", lambda now: {"power_w": 100.0})
    second = Scripted("amdgpu", lambda now: {"power_w": 5.0, "gpu_temp_c": 50.0})
    telemetry = _run(clock, [first, second, rapl_only]).summarize()
    assert telemetry.energy_metric == "power_w"
    assert telemetry.phases[0].metrics["power_w"].mean == 100.0
    assert telemetry.phases[0].metrics["gpu_temp_c"].mean == 50.0


def test_energy_fills_short_gaps_and_refuses_long_ones(clock: Any) -> None:
    def one_missing(now: float) -> dict[str, float]:
        return {} if round(now - 1000.0, 6) == 1.5 else {"power_w": 40.0}

    telemetry = _run(clock, [Scripted("gpu", one_missing)]).summarize()
    assert telemetry.phases[0].energy_j == pytest.approx(80.0)  # 1.5 s of 2 s read: mean fills

    def mostly_missing(now: float) -> dict[str, float]:
        return {"power_w": 40.0} if round(now - 1000.0, 6) == 0.5 else {}

    telemetry = _run(clock, [Scripted("gpu", mostly_missing)]).summarize()
    assert telemetry.phases[0].energy_j is None


def test_series_is_downsampled_to_at_most_max_points(clock: Any) -> None:
    def read(now: float) -> dict[str, float]:
        step = round((now - 1000.0) / 0.1)
        out = {"cpu_pct": float(step)}
        if step % 2 == 0:
            out["rss_bytes"] = 1e6
        return out

    sampler = Sampler([Scripted("p", read)], interval_s=0.1, clock=clock, threaded=False)
    with sampler:
        for _ in range(998):  # + the baseline and the last sample: 1000
            clock.advance(0.1)
            sampler.tick()
    series = sampler.summarize().series
    assert sorted(series) == ["cpu_pct", "rss_bytes", "t_s"]
    assert len(series["t_s"]) == 250  # 1000 samples in groups of 4
    assert all(len(values) == 250 for values in series.values())
    assert series["t_s"][:2] == [0.15, 0.55]
    assert series["cpu_pct"][:2] == [1.5, 5.5]
    assert series["rss_bytes"][0] == 1e6
    assert all(a < b for a, b in zip(series["t_s"], series["t_s"][1:], strict=False))


def test_failing_and_absent_sources_never_fail_the_run(clock: Any) -> None:
    def broken(now: float) -> dict[str, float]:
        raise OSError("EBUSY")

    class BadProbe(Scripted):
        def probe(self) -> SourceStatus:
            raise RuntimeError("driver bug")

    good = Scripted("good", lambda now: {"cpu_pct": 10.0})
    bad = Scripted("bad", broken)
    absent = Scripted("absent", broken, available=False)
    silent = Scripted("silent", lambda now: {})
    sampler = _run(clock, [good, bad, absent, BadProbe("worse", broken), silent], until_s=3.0)
    telemetry = sampler.summarize()
    statuses = {status.name: status for status in telemetry.sources}
    assert statuses["good"].available and statuses["good"].detail == "scripted"
    assert statuses["bad"].detail == "scripted; stopped after 3 failed reads in a row"
    assert statuses["absent"].detail == "not on this box"
    assert not statuses["worse"].available
    assert "probe failed: RuntimeError('driver bug')" == statuses["worse"].detail
    assert statuses["silent"].detail == "scripted; gave no reading during the run"
    assert telemetry.phases[0].metrics["cpu_pct"].samples == 6
    assert good.closed and bad.closed and not absent.closed


def test_watch_is_forwarded_before_and_during_the_run(clock: Any) -> None:
    source = Scripted("p", lambda now: {})
    sampler = Sampler([source], clock=clock, threaded=False)
    sampler.watch(11)
    with sampler:
        assert source.watched == [11]
        sampler.watch(12)
    assert source.watched == [11, 12]


def test_sampler_cpu_is_measured_and_telemetry_round_trips(clock: Any) -> None:
    sampler = _run(clock, [Scripted("gpu", _script(clock))])
    telemetry = sampler.summarize()
    assert telemetry.sampler_cpu_s >= 0
    assert telemetry.sampler_cpu_pct == pytest.approx(100 * telemetry.sampler_cpu_s / 2.0)
    assert Telemetry.model_validate_json(telemetry.model_dump_json()) == telemetry


def test_threaded_sampling_keeps_its_schedule() -> None:
    sampler = Sampler([Scripted("p", lambda now: {"cpu_pct": 1.0})], interval_s=0.02)
    with sampler:
        time.sleep(0.3)
    telemetry = sampler.summarize()
    times = telemetry.series["t_s"]
    # (the last sample, taken on exit, may land within the 1 ms rounding of the one before)
    assert all(a < b for a, b in zip(times[:-1], times[1:-1], strict=False))
    # ~15 slots in 0.3 s; a loaded machine may skip some, never run ahead of the schedule.
    assert 8 <= telemetry.samples <= 0.3 / 0.02 + 3
    assert math.isfinite(telemetry.sampler_cpu_pct)


def test_fixture_box_end_to_end(strix: Any, clock: Any) -> None:
    """amdgpu + fdinfo + RAPL on the Strix Halo tree, summarized into one phase."""
    sources: list[Source] = [AmdGpu(strix.root), DrmFdinfo(strix.root), Rapl(strix.root)]
    sampler = Sampler(sources, interval_s=0.5, clock=clock, threaded=False)
    with sampler:
        sampler.watch(4242)
        for step in range(1, 4):
            clock.advance(0.5)
            for fd in (5, 6):
                strix.fdinfo_add(4242, fd, "engine-compute", 450_000_000)
                strix.fdinfo_add(4242, fd, "engine-dma", 100_000_000)
            strix.add("sys/class/powercap/intel-rapl:0/energy_uj", 40_000_000)
            strix.write("sys/class/drm/card1/device/gpu_busy_percent", 80 + step)
            sampler.tick()
        clock.advance(0.5)
    telemetry = sampler.summarize([PhaseWindow(phase="decode", start_s=0.5, end_s=1.5, tokens=40)])
    (decode,) = telemetry.phases
    assert telemetry.energy_metric == "power_w"  # amdgpu socket power before RAPL
    assert {s.name: s.power_includes_cpu for s in telemetry.sources} == {
        "amdgpu": True, "drm_fdinfo": None, "rapl": True
    }  # fmt: skip
    assert decode.metrics["engine_compute_busy_pct"].mean == pytest.approx(90.0)
    assert decode.metrics["engine_dma_busy_pct"].mean == pytest.approx(20.0)
    assert decode.metrics["package_power_w"].mean == pytest.approx(80.0)
    assert decode.metrics["gpu_busy_pct"].mean == pytest.approx(82.5)
    assert decode.energy_j == pytest.approx(68.042)
    assert decode.j_per_token == pytest.approx(68.042 / 40)


def test_mean_of_equal_values_never_exceeds_the_peak() -> None:
    # Seen on a real run: 11 equal RSS readings, uneven intervals, mean a hair above the peak.
    times = [0.0, 0.0513, 0.1007, 0.1521, 0.2049, 0.2533, 0.3011, 0.3502, 0.4017, 0.4551]
    samples = [Sample(t, {"rss_bytes": 218263552.0}) for t in times]
    window = PhaseWindow(phase="decode", start_s=0.0123, end_s=0.4377)
    summary = summarize_phase(samples, window, power_metric=None).metrics["rss_bytes"]
    assert summary.mean == summary.peak == 218263552.0


def test_every_is_due_once_per_period_and_after_the_clock_goes_back() -> None:
    every = Every(1.0)
    assert [every.due(t) for t in (5.0, 5.5, 5.99, 6.0, 6.5, 2.0, 2.1)] == [
        True, False, False, True, False, True, False
    ]  # fmt: skip
