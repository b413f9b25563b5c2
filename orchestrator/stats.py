"""Robust summaries of repeated measurements.

Medians and the median absolute deviation (MAD) rather than mean and standard deviation: a
benchmark run on a shared box gets the odd slow repetition, and one outlier should not move the
figure a reader takes away.

`describe` adds what a report cell needs to be trusted: a relative spread and, from
MIN_SAMPLES_FOR_CI samples, a distribution-free 95% confidence interval of the median (two order
statistics, chosen by the binomial distribution: exact, and O(n) where the 4,000-resample
bootstrap it replaced cost 4,000 medians per cell); `compare` turns
two cells into a ratio and a verdict that only an exact two-sided Mann-Whitney U test at 5% can
give (with 3 samples a side, the smallest possible p is 0.1: no verdict, whatever the data).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

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
# Fewer samples than this on either side: never a verdict (and no "unstable" mark).
MIN_SAMPLES_FOR_VERDICT = 3
# Fewer samples than this: no confidence interval, the range (min-max) instead. The widest
# interval n samples give, [min, max], holds the true median with probability 1 - 2 / 2**n:
# 75% at n=3, 93.75% at n=5, 96.9% at n=6, so 6 is the least n with an honest 95% interval
# (`median_ci` finds the same; the percentile bootstrap agrees: tests/orchestrator/test_stats.py).
MIN_SAMPLES_FOR_CI = 6
# A difference is claimed only when the exact two-sided Mann-Whitney U test rejects at this level.
ALPHA = 0.05
# Pooled sample counts up to this use the exact null distribution; above, the normal approximation.
EXACT_TEST_MAX_SAMPLES = 60
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 20250301  # fixed: the same samples always give the same interval


@dataclass(frozen=True)
class CellStats:
    """What a report cell knows about its samples: n, median, spread and a 95% CI.

    `ci_low`/`ci_high` bound the median (`median_ci`: order statistics, deterministic);
    None when there are fewer than MIN_SAMPLES_FOR_CI samples. `samples` are kept for the test
    that `compare` makes.
    """

    n: int
    median: float
    mad: float
    rel_spread: float | None  # 1.4826 * MAD / |median|; None when the median is 0
    ci_low: float | None
    ci_high: float | None
    samples: tuple[float, ...] = ()
    # Some samples come from runs the worker found disturbed (other processes used the box,
    # jobs.result.Disturbance): `compare` draws no verdict from them.
    disturbed: bool = False

    @property
    def unstable(self) -> bool:
        return (
            self.n >= MIN_SAMPLES_FOR_VERDICT
            and self.rel_spread is not None
            and self.rel_spread > UNSTABLE_SPREAD
        )


def describe(samples: list[float], *, disturbed: bool = False) -> CellStats | None:
    """n, median, MAD, relative spread and 95% CI of the median; None for no samples."""
    base = summarize(samples)
    if base is None:
        return None
    spread = _MAD_TO_SIGMA * base.mad / abs(base.median) if base.median else None
    low = high = None
    if base.n >= MIN_SAMPLES_FOR_CI:
        low, high = median_ci(samples)
    return CellStats(base.n, base.median, base.mad, spread, low, high, tuple(samples), disturbed)


def median_ci(samples: Sequence[float], *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: [x_(k), x_(n+1-k)] of the sorted
    samples, with k the largest rank such that the interval holds the true median with at
    least `confidence` (each sample falls below the median with probability 1/2, so the count
    below it is Binomial(n, 1/2)). Exact for any continuous distribution, no resampling, and
    [min, max] when n is too small for `confidence` (MIN_SAMPLES_FOR_CI keeps that out of
    reports). Where the percentile bootstrap of the median undercovers a little at small n,
    this interval is one order statistic (at most two) wider on each side.
    """
    ordered = sorted(samples)
    k = _ci_rank(len(ordered), confidence)
    return float(ordered[k - 1]), float(ordered[len(ordered) - k])


@lru_cache(maxsize=1024)
def _ci_rank(n: int, confidence: float) -> int:
    """The largest k >= 1 with P(Binomial(n, 1/2) <= k - 1) <= (1 - confidence) / 2 (1 when
    even k=1 is too wide a claim: the caller then gets [min, max])."""
    tail = (1.0 - confidence) / 2.0
    log_half_n = n * math.log(2.0)
    log_n_fact = math.lgamma(n + 1)
    # Below 10 standard deviations under the mean the binomial mass is < 1e-20: start there.
    k = max(0, int(n / 2 - 5 * math.sqrt(n)))
    cdf = 0.0
    while k < n:
        mass = math.exp(log_n_fact - math.lgamma(k + 1) - math.lgamma(n - k + 1) - log_half_n)
        if cdf + mass > tail:
            break
        cdf += mass
        k += 1
    return max(1, min(k, (n + 1) // 2))


def bootstrap_ci(
    samples: list[float],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the median (deterministic: seeded RNG).

    What reports used before `median_ci`; kept as the reference its tests compare with. It
    costs `resamples` medians of n samples: too slow for a report of many large cells.
    """
    data = np.asarray(samples, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data), size=(resamples, len(data)))
    medians = np.median(data[picks], axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(medians, [tail, 100.0 - tail])
    return float(low), float(high)


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test (rank-sum) that `a` and `b` come from one
    distribution.

    Exact for up to EXACT_TEST_MAX_SAMPLES pooled samples: the rank sum of `a` is compared with
    its distribution over every split of the pooled (mid-)ranks, counted by dynamic programming,
    so ties are handled exactly. Above that, the normal approximation with the tie correction.
    """
    n, m = len(a), len(b)
    pooled = np.asarray([*a, *b], dtype=float)
    total = n + m
    order = np.argsort(pooled, kind="mergesort")
    ranks2 = np.empty(total, dtype=np.int64)  # twice the mid-ranks: integers, exact
    values = pooled[order]
    start = 0
    while start < total:
        end = start
        while end + 1 < total and values[end + 1] == values[start]:
            end += 1
        ranks2[order[start : end + 1]] = start + end + 2  # 2 * mean of ranks start+1..end+1
        start = end + 1
    observed = int(ranks2[:n].sum())
    centre = n * (total + 1)  # twice the expected rank sum
    distance = abs(observed - centre)
    if total > EXACT_TEST_MAX_SAMPLES:
        _, counts = np.unique(pooled, return_counts=True)
        ties = float(np.sum(counts**3 - counts))
        variance = n * m / 12.0 * ((total + 1) - ties / (total * (total - 1)))
        if variance <= 0:
            return 1.0
        z = (distance / 2.0) / math.sqrt(variance)
        return min(1.0, math.erfc(z / math.sqrt(2.0)))
    # ways[k][s]: how many k-subsets of the ranks seen so far sum (doubled) to s.
    max_sum = int(ranks2.sum())
    ways = np.zeros((n + 1, max_sum + 1))
    ways[0, 0] = 1.0
    for r in ranks2:
        ways[1:, r:] += ways[:-1, : max_sum + 1 - r].copy()
    sums = np.arange(max_sum + 1)
    dist = ways[n]
    extreme = dist[np.abs(sums - centre) >= distance].sum()
    return float(min(1.0, extreme / dist.sum()))


class Verdict(StrEnum):
    """How a cell compares with its baseline. UP/DOWN only when the exact test says so."""

    UP = "up"
    DOWN = "down"
    SAME = "not distinguishable"
    TOO_FEW = "too few samples"
    DISTURBED = "disturbed"  # either side has samples from a disturbed run: no claim


@dataclass(frozen=True)
class Comparison:
    ratio: float | None  # median / baseline median; None when the baseline median is 0
    verdict: Verdict
    p_value: float | None = None  # two-sided Mann-Whitney U; None below MIN_SAMPLES_FOR_VERDICT


def compare(cell: CellStats, baseline: CellStats) -> Comparison:
    """Ratio of medians and a verdict that claims no more than the samples show.

    The rule: a difference is claimed only when the exact two-sided Mann-Whitney U test of the
    two cells' samples rejects "same distribution" at ALPHA, and its direction is that of the
    medians; each side needs MIN_SAMPLES_FOR_VERDICT samples. Same-distribution pairs are then
    called different at most 5% of the time, at any n. With 3 samples a side the smallest
    possible p is 2/20 = 0.1, so 3 repetitions can never show a difference: use 5 or more.
    Samples from a disturbed run (either side) give no verdict at all: another process may
    have made the difference.
    """
    ratio = cell.median / baseline.median if baseline.median else None
    if cell.disturbed or baseline.disturbed:
        return Comparison(ratio, Verdict.DISTURBED)
    if cell.n < MIN_SAMPLES_FOR_VERDICT or baseline.n < MIN_SAMPLES_FOR_VERDICT:
        return Comparison(ratio, Verdict.TOO_FEW)
    p = mann_whitney_p(cell.samples, baseline.samples)
    if p > ALPHA or cell.median == baseline.median:
        return Comparison(ratio, Verdict.SAME, p)
    return Comparison(ratio, Verdict.UP if cell.median > baseline.median else Verdict.DOWN, p)
