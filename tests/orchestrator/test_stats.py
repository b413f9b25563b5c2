"""Cell statistics and verdicts, on samples drawn from known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.stats import (
    MIN_SAMPLES_FOR_CI,
    UNSTABLE_SPREAD,
    CellStats,
    Verdict,
    bootstrap_ci,
    compare,
    describe,
    mann_whitney_p,
    median_ci,
)


def _normal(mean: float, sd: float, n: int, seed: int) -> list[float]:
    return [float(x) for x in np.random.default_rng(seed).normal(mean, sd, n)]


def test_describe_knows_n_median_spread_and_ci() -> None:
    stats = describe([10.0, 12.0, 11.0, 10.5, 11.5, 11.2])

    assert stats is not None
    assert (stats.n, stats.median) == (6, pytest.approx(11.1))
    assert stats.mad == pytest.approx(0.5)
    assert stats.rel_spread == pytest.approx(1.4826 * 0.5 / 11.1)
    assert stats.ci_low is not None and stats.ci_high is not None
    assert 10.0 <= stats.ci_low <= 11.1 <= stats.ci_high <= 12.0
    assert not stats.unstable


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_no_ci_below_six_samples(n: int) -> None:
    # The bootstrap interval there is about [min, max]: it would claim 95% and cover far less.
    stats = describe([10.0, 12.0, 11.0, 10.5, 11.5][:n])

    assert n < MIN_SAMPLES_FOR_CI
    assert stats is not None and stats.ci_low is None and stats.ci_high is None


@pytest.mark.parametrize(("n", "low", "high"), [(3, 0.70, 0.80), (6, 0.92, 0.98)])
def test_bootstrap_ci_is_honest_only_from_six_samples(n: int, low: float, high: float) -> None:
    rng = np.random.default_rng(n)
    hits = 0
    for _ in range(300):
        lo, hi = bootstrap_ci([float(x) for x in rng.normal(50.0, 5.0, n)], resamples=1000)
        hits += lo <= 50.0 <= hi
    assert low <= hits / 300 <= high


def test_describe_is_deterministic() -> None:
    samples = _normal(40.0, 2.0, 7, seed=1)

    assert describe(samples) == describe(list(samples))


def test_fewer_than_three_samples_are_never_unstable() -> None:
    stats = describe([10.0, 12.0])

    assert stats is not None and stats.ci_low is None and stats.ci_high is None
    assert not stats.unstable  # two samples cannot tell


def test_no_samples_is_none_never_zero() -> None:
    assert describe([]) is None


def test_unstable_when_the_robust_spread_is_above_the_threshold() -> None:
    steady = describe([100.0, 101.0, 99.0, 100.5, 99.5])
    noisy = describe([100.0, 130.0, 70.0, 115.0, 85.0])

    assert steady is not None and noisy is not None
    assert not steady.unstable
    assert noisy.unstable and noisy.rel_spread is not None
    assert noisy.rel_spread > UNSTABLE_SPREAD


def test_bootstrap_ci_covers_the_true_median_about_95_percent_of_the_time() -> None:
    hits = 0
    for seed in range(200):
        low, high = bootstrap_ci(_normal(50.0, 5.0, 15, seed), resamples=1000)
        hits += low <= 50.0 <= high
    assert 0.88 <= hits / 200 <= 1.0


@pytest.mark.parametrize(
    ("effect", "verdict"),
    [
        (0.0, Verdict.SAME),
        (0.002, Verdict.SAME),
        (0.01, Verdict.SAME),
        (0.10, Verdict.UP),
        (0.30, Verdict.UP),
        (-0.10, Verdict.DOWN),
    ],
)
def test_verdict_flips_only_when_the_effect_is_large(effect: float, verdict: Verdict) -> None:
    # 10 repetitions with a 3% standard deviation: a 1% difference cannot be told apart, 10% can.
    baseline = describe(_normal(100.0, 3.0, 10, seed=11))
    cell = describe(_normal(100.0 * (1 + effect), 3.0, 10, seed=12))
    assert baseline is not None and cell is not None

    comparison = compare(cell, baseline)

    assert comparison.verdict is verdict
    assert comparison.ratio == pytest.approx(cell.median / baseline.median)


def test_verdict_sequence_is_monotonic_as_the_effect_grows() -> None:
    baseline = describe(_normal(100.0, 3.0, 10, seed=21))
    assert baseline is not None
    verdicts = []
    for effect in np.linspace(0.0, 0.2, 21):
        cell = describe(_normal(100.0 * (1 + effect), 3.0, 10, seed=22))
        assert cell is not None
        verdicts.append(compare(cell, baseline).verdict)
    first_up = verdicts.index(Verdict.UP)
    assert first_up > 0  # the smallest effects are not distinguishable
    assert set(verdicts[:first_up]) == {Verdict.SAME}
    assert set(verdicts[first_up:]) == {Verdict.UP}


@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_same_distribution_is_rarely_called_different(n: int) -> None:
    # The false-claim rate of the verdict: at most the test's 5% (plus sampling noise), at any n.
    rng = np.random.default_rng(1000 + n)
    claims = 0
    trials = 400
    for _ in range(trials):
        a = describe([float(x) for x in rng.normal(100.0, 3.0, n)])
        b = describe([float(x) for x in rng.normal(100.0, 3.0, n)])
        assert a is not None and b is not None
        claims += compare(a, b).verdict in (Verdict.UP, Verdict.DOWN)
    assert claims / trials <= 0.06


def test_three_repetitions_can_never_show_a_difference() -> None:
    # The smallest exact two-sided p at 3 vs 3 is 2/20 = 0.1: honest answer is "≈".
    slow = describe([10.0, 10.1, 10.2])
    fast = describe([100.0, 100.1, 100.2])
    assert slow is not None and fast is not None

    comparison = compare(fast, slow)

    assert comparison.verdict is Verdict.SAME
    assert comparison.p_value == pytest.approx(0.1)


def test_mann_whitney_p_is_exact() -> None:
    assert mann_whitney_p([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]) == pytest.approx(2 / 70)
    assert mann_whitney_p([1.0, 2.0], [3.0, 4.0]) == pytest.approx(2 / 6)
    # Ties: by enumeration of the 252 splits of the mid-ranks.
    assert mann_whitney_p([1, 1, 2, 2, 3], [2, 3, 3, 4, 4]) == pytest.approx(0.0794, abs=1e-4)
    assert mann_whitney_p([5.0, 5.0, 5.0], [5.0, 5.0, 5.0]) == 1.0
    # Large samples: the normal approximation, continuous with the exact test.
    rng = np.random.default_rng(7)
    a, b = list(rng.normal(0.0, 1.0, 40)), list(rng.normal(1.0, 1.0, 40))
    assert mann_whitney_p(a, b) < 0.01


def test_more_samples_resolve_a_smaller_effect() -> None:
    # The same 3% effect: not distinguishable with 4 repetitions, a difference with 40.
    few = compare(
        describe(_normal(103.0, 3.0, 4, seed=31)),  # type: ignore[arg-type]
        describe(_normal(100.0, 3.0, 4, seed=32)),  # type: ignore[arg-type]
    )
    many = compare(
        describe(_normal(103.0, 3.0, 40, seed=31)),  # type: ignore[arg-type]
        describe(_normal(100.0, 3.0, 40, seed=32)),  # type: ignore[arg-type]
    )
    assert few.verdict is Verdict.SAME
    assert many.verdict is Verdict.UP


def test_never_a_verdict_below_three_samples() -> None:
    big = describe([200.0, 201.0])
    small = describe([100.0, 101.0, 99.0, 100.5, 99.5])
    assert big is not None and small is not None

    assert compare(big, small).verdict is Verdict.TOO_FEW
    assert compare(small, big).verdict is Verdict.TOO_FEW
    assert compare(big, small).ratio == pytest.approx(200.5 / 100.0)


def test_zero_baseline_has_no_ratio() -> None:
    zero = CellStats(
        n=5, median=0.0, mad=0.0, rel_spread=None, ci_low=None, ci_high=None, samples=(0.0,) * 5
    )
    cell = describe([1.0, 1.1, 0.9, 1.05, 0.95])
    assert cell is not None

    comparison = compare(cell, zero)

    assert comparison.ratio is None and comparison.verdict is Verdict.UP


@pytest.mark.parametrize(("n", "low_rank"), [(6, 1), (8, 1), (10, 2), (15, 4), (20, 6), (100, 40)])
def test_median_ci_takes_the_textbook_order_statistics(n: int, low_rank: int) -> None:
    # The binomial tables' 95% ranks: 10 samples -> [x(2), x(9)], 100 -> [x(40), x(61)].
    samples = [float(x) for x in np.random.default_rng(n).permutation(n) + 1]

    assert median_ci(samples) == (float(low_rank), float(n + 1 - low_rank))


@pytest.mark.parametrize("n", [6, 9, 15, 40])
def test_median_ci_covers_the_true_median_at_least_95_percent_of_the_time(n: int) -> None:
    rng = np.random.default_rng(100 + n)
    trials = 2000
    hits = 0
    for _ in range(trials):
        low, high = median_ci([float(x) for x in rng.exponential(1.0, n)])  # skewed on purpose
        hits += low <= np.log(2.0) <= high
    assert 0.94 <= hits / trials <= 0.995


@pytest.mark.parametrize("n", [6, 7, 10, 15, 24, 40])
def test_median_ci_agrees_with_the_bootstrap_it_replaced(n: int) -> None:
    # Same answers up to two order statistics a side (usually one): the percentile bootstrap of
    # the median is drawn from the same order statistics and undercovers a little at small n.
    rng = np.random.default_rng(200 + n)
    for _ in range(20):
        samples = [float(x) for x in rng.normal(50.0, 5.0, n)]
        ordered = sorted(samples)
        low, high = median_ci(samples)
        boot_low, boot_high = bootstrap_ci(samples)
        assert low <= boot_low <= high and low <= boot_high <= high
        assert boot_low <= ordered[ordered.index(low) + 2]
        assert boot_high >= ordered[ordered.index(high) - 2]


def test_describe_uses_the_order_statistic_interval() -> None:
    samples = [10.0, 12.0, 11.0, 10.5, 11.5, 11.2, 10.9, 11.8, 10.2, 11.1]
    stats = describe(samples)

    assert stats is not None and (stats.ci_low, stats.ci_high) == median_ci(samples)
    assert (stats.ci_low, stats.ci_high) == (10.2, 11.8)  # x(2) and x(9) of 10
