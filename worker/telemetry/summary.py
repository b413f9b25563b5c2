"""Turn timestamped samples into per-phase summaries, energy and a chart series.

Time convention: sample i, read at t_i, stands for the interval (t_{i-1}, t_i]. Values made
from counters (busy %, RAPL or NVML power, CPU %) are exactly the mean over that interval;
gauges (memory, temperature, hwmon power) are the reading at its end. Sample 0, the baseline
read before the run, stands for no interval: it only gives `baseline`.

For a window [start, end] (a PhaseWindow):
- mean = the overlap-weighted mean of the samples whose interval overlaps the window, so a
  prefill shorter than one interval still gets the sample that covers it;
- peak = the largest of those samples; samples = how many there were;
- energy_j = the overlap-weighted integral of the power metric; with counter-based power this
  is exactly the energy counted in the window when the window's edges fall on samples.
  When less than half the window has a power reading the energy is unknown (None).
- j_per_token = energy_j / tokens; tokens_per_s_per_w = (tokens / s) / (J / s) = tokens / J.

Power precedence (ENERGY_METRICS): `power_w` (the GPU: NVML board power, or amdgpu hwmon,
which on an APU is the whole package) before `package_power_w` (RAPL, the CPU package). On an
APU both cover the CPU, so adding them would count it twice; on a CPU-only box only RAPL exists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from jobs.telemetry import MetricSummary, PhaseSummary, PhaseWindow

ENERGY_METRICS = ("power_w", "package_power_w")
_MIN_POWER_COVERAGE = 0.5


@dataclass(frozen=True)
class Sample:
    t_s: float  # seconds since the baseline sample
    values: dict[str, float]


def energy_metric(samples: Sequence[Sample]) -> str | None:
    """The power metric energy is integrated from, by ENERGY_METRICS precedence."""
    for metric in ENERGY_METRICS:
        if any(metric in sample.values for sample in samples[1:]):
            return metric
    return None


def _overlaps(samples: Sequence[Sample], start: float, end: float) -> list[tuple[Sample, float]]:
    """(sample, seconds of its interval inside [start, end]) for every sample touching it."""
    found = []
    for before, sample in zip(samples, samples[1:], strict=False):
        lo, hi = max(before.t_s, start), min(sample.t_s, end)
        if hi > lo:
            found.append((sample, hi - lo))
        elif end <= start and before.t_s < start <= sample.t_s:
            found.append((sample, 1.0))  # an instant: the sample that covers it, full weight
    return found


def _weighted_mean(weighted: Sequence[tuple[float, float]]) -> float | None:
    total_w = sum(w for _, w in weighted)
    if total_w <= 0:
        return None
    mean = sum(v * w for v, w in weighted) / total_w
    # Rounding can put the mean of equal values a hair above them: keep mean <= peak exact.
    return min(max(mean, min(v for v, _ in weighted)), max(v for v, _ in weighted))


def _typical_interval(samples: Sequence[Sample]) -> float:
    gaps = sorted(b.t_s - a.t_s for a, b in zip(samples, samples[1:], strict=False))
    return gaps[len(gaps) // 2] if gaps else 0.0


def summarize_phase(
    samples: Sequence[Sample], window: PhaseWindow, power_metric: str | None
) -> PhaseSummary:
    start, end = window.start_s, window.end_s
    covering = _overlaps(samples, start, end)
    baseline = samples[0].values if samples else {}
    names = sorted({name for sample, _ in covering for name in sample.values} | set(baseline))
    metrics: dict[str, MetricSummary] = {}
    for name in names:
        weighted = [(s.values[name], w) for s, w in covering if name in s.values]
        metrics[name] = MetricSummary(
            mean=_weighted_mean(weighted),
            peak=max((v for v, _ in weighted), default=None),
            baseline=baseline.get(name),
            samples=len(weighted),
        )
    summary = PhaseSummary(
        phase=window.phase, start_s=start, end_s=end, tokens=window.tokens, metrics=metrics
    )
    duration = end - start
    if power_metric is None or duration <= 0 or duration < _typical_interval(samples):
        # A window shorter than the sample spacing would get power read mostly outside it
        # (and hwmon's power1_average is itself averaged): no energy rather than a guess.
        return summary
    powered = [(s.values[power_metric], w) for s, w in covering if power_metric in s.values]
    covered_s = sum(w for _, w in powered)
    if covered_s < _MIN_POWER_COVERAGE * duration:
        return summary
    # Gaps (a failed read) are filled with the window's mean power, not with zero.
    energy = sum(p * w for p, w in powered) / covered_s * duration
    summary.energy_j = energy
    if window.tokens > 0:
        summary.j_per_token = energy / window.tokens
        if energy > 0:
            summary.tokens_per_s_per_w = window.tokens / energy
    return summary


def downsample(samples: Sequence[Sample], max_points: int) -> dict[str, list[float | None]]:
    """The chart series: `t_s` plus one list per metric, at most `max_points` long.

    Consecutive samples are averaged in equal groups; None where a group has no reading.
    """
    if not samples:
        return {}
    group = max(1, math.ceil(len(samples) / max(1, max_points)))
    names = sorted({name for sample in samples for name in sample.values})
    series: dict[str, list[float | None]] = {"t_s": []}
    for name in names:
        series[name] = []
    for first in range(0, len(samples), group):
        chunk = samples[first : first + group]
        series["t_s"].append(round(sum(s.t_s for s in chunk) / len(chunk), 3))
        for name in names:
            values = [s.values[name] for s in chunk if name in s.values]
            series[name].append(round(sum(values) / len(values), 3) if values else None)
    return series
