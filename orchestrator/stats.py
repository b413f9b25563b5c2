"""Robust summaries of repeated measurements.

Medians and the median absolute deviation (MAD) rather than mean and standard deviation: a
benchmark run on a shared box gets the odd slow repetition, and one outlier should not move the
figure a reader takes away.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


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
    """Three significant figures or so, never scientific notation for tokens/s."""
    # Choose the decimals from the value as it will print: 99.96 is "100", not "100.0".
    magnitude = abs(float(f"{value:.3g}"))
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
