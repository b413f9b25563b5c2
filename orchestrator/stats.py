"""Robust summaries of repeated measurements.

Medians and the median absolute deviation (MAD) rather than mean and standard deviation: a
benchmark run on a shared box gets the odd slow repetition, and one outlier should not move the
figure a reader takes away.

`describe` adds what a report cell needs to be trusted: a 95% bootstrap confidence interval of
the median and a relative spread; `compare` turns two cells into a ratio and a conservative
verdict.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


@dataclass(frozen=True)
class Summary:
    """n samples summarised as median ± MAD, with the extremes kept for honesty."""

    n: int
    median: float
    mad: float
    minimum: float
    maximum: float


def summarize(samples: list[float]) -> Summary | None:
    """None for no samples: a missing number is shown as missing, never as zero."""
    if not samples:
        return None
    med = statistics.median(samples)
    mad = statistics.median(abs(x - med) for x in samples)
    return Summary(len(samples), med, mad, min(samples), max(samples))


def fmt_number(value: float) -> str:
    """Three significant figures or so, never scientific notation."""
    # Choose the decimals from the value as it will print: 99.96 is "100", not "100.0".
    magnitude = abs(float(f"{value:.3g}"))
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude == 0 or magnitude >= 0.1:
        return f"{value:.2f}"
    # Small figures (a TTFT of 3 ms in seconds) keep three significant digits, not "0.00".
    return f"{value:.{2 - math.floor(math.log10(magnitude))}f}"


# A cell is "unstable" when its robust relative spread is above this. The spread is
# 1.4826 * MAD / median: for normally distributed samples 1.4826 * MAD estimates the standard
# deviation, so this is a coefficient of variation that one outlier cannot inflate; the
# threshold is pyperf's (it warns when the standard deviation is above 10% of the mean).
UNSTABLE_SPREAD = 0.10
_MAD_TO_SIGMA = 1.4826
# Fewer samples than this: no confidence interval and never a verdict.
MIN_SAMPLES_FOR_CI = 3
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 20250301  # fixed: the same samples always give the same interval


@dataclass(frozen=True)
class CellStats:
    """What a report cell knows about its samples: n, median, spread and a 95% CI.

    `ci_low`/`ci_high` bound the median (percentile bootstrap, seeded, so deterministic);
    None when there are fewer than MIN_SAMPLES_FOR_CI samples.
    """

    n: int
    median: float
    mad: float
    rel_spread: float | None  # 1.4826 * MAD / |median|; None when the median is 0
    ci_low: float | None
    ci_high: float | None

    @property
    def unstable(self) -> bool:
        return (
            self.n >= MIN_SAMPLES_FOR_CI
            and self.rel_spread is not None
            and self.rel_spread > UNSTABLE_SPREAD
        )


def describe(samples: list[float]) -> CellStats | None:
    """n, median, MAD, relative spread and bootstrap CI of the median; None for no samples."""
    base = summarize(samples)
    if base is None:
        return None
    spread = _MAD_TO_SIGMA * base.mad / abs(base.median) if base.median else None
    low = high = None
    if base.n >= MIN_SAMPLES_FOR_CI:
        low, high = bootstrap_ci(samples)
    return CellStats(base.n, base.median, base.mad, spread, low, high)


def bootstrap_ci(
    samples: list[float],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the median (deterministic: seeded RNG)."""
    data = np.asarray(samples, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data), size=(resamples, len(data)))
    medians = np.median(data[picks], axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(medians, [tail, 100.0 - tail])
    return float(low), float(high)


class Verdict(StrEnum):
    """How a cell compares with its baseline. UP/DOWN only when the 95% CIs do not overlap."""

    UP = "up"
    DOWN = "down"
    SAME = "not distinguishable"
    TOO_FEW = "too few samples"


@dataclass(frozen=True)
class Comparison:
    ratio: float | None  # median / baseline median; None when the baseline median is 0
    verdict: Verdict


def compare(cell: CellStats, baseline: CellStats) -> Comparison:
    """Ratio of medians and a conservative verdict.

    The rule: a difference is claimed only when the two cells' 95% bootstrap CIs of the median
    do not overlap (each needs at least MIN_SAMPLES_FOR_CI samples). Non-overlap of two 95%
    intervals is stricter than a 5% test, so a claimed difference is a real one far more often
    than not; a small true difference with few samples stays "not distinguishable".
    """
    ratio = cell.median / baseline.median if baseline.median else None
    if (
        cell.ci_low is None
        or cell.ci_high is None
        or baseline.ci_low is None
        or baseline.ci_high is None
    ):
        return Comparison(ratio, Verdict.TOO_FEW)
    if cell.ci_low > baseline.ci_high:
        return Comparison(ratio, Verdict.UP)
    if cell.ci_high < baseline.ci_low:
        return Comparison(ratio, Verdict.DOWN)
    return Comparison(ratio, Verdict.SAME)
