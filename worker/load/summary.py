"""A load run's figures from its requests: throughput, latency percentiles, goodput.

Definitions (the ones AIPerf, GuideLLM and vLLM's benchmark_serving use, where they agree):
- window: first measured request sent -> last measured request ended (ok or not);
- throughput: output tokens of the ok requests / window; request_throughput: ok requests /
  window;
- TTFT: sent -> first token event; E2E: sent -> stream closed; both over ok requests;
- ITL: every gap between consecutive token events of an ok request, pooled over all of them
  (vLLM's `itl`);
- tokens/s per user: per ok request, (token events - 1) / (last event - first event): the
  speed its reader sees once the answer streams (1 / its mean ITL);
- goodput: ok requests within every SLO named (TTFT, the request's mean ITL, E2E) / window;
- percentiles: linear interpolation between the two nearest ranks (`percentile`).
Failed requests are counted in `errors` by kind and never enter a latency figure: a timeout's
latency is the limit, not a measurement.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from jobs.load import Distribution, LoadRequest, LoadSpec, LoadSummary, Slo


def percentile(ordered: Sequence[float], p: float) -> float:
    """The p-th percentile of sorted values: rank (n - 1) * p / 100, interpolated linearly.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 90)
    (2.5, 3.7)
    """
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float]) -> Distribution | None:
    """n, mean, min, p50/p90/p99 and max of `values`; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return Distribution(
        n=len(ordered),
        mean=math.fsum(ordered) / len(ordered),
        min=ordered[0],
        p50=percentile(ordered, 50),
        p90=percentile(ordered, 90),
        p99=percentile(ordered, 99),
        max=ordered[-1],
    )


def gaps(record: LoadRequest) -> list[float]:
    """Seconds between the request's consecutive token events."""
    times = record.chunk_s
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def mean_itl_s(record: LoadRequest) -> float | None:
    """The request's decode span over its gaps (None with fewer than two token events)."""
    if len(record.chunk_s) < 2:
        return None
    return (record.chunk_s[-1] - record.chunk_s[0]) / (len(record.chunk_s) - 1)


def meets(record: LoadRequest, slo: Slo) -> bool:
    """An ok request within every objective named; a request without the figure an objective
    needs (one token: no ITL) does not meet it."""
    if not record.ok:
        return False
    checks = [
        (slo.ttft_s, record.ttft_s),
        (slo.e2e_s, record.e2e_s),
        (None if slo.itl_ms is None else slo.itl_ms / 1000, mean_itl_s(record)),
    ]
    return all(limit is None or (value is not None and value <= limit) for limit, value in checks)


def _server(records: list[LoadRequest], key: str) -> Distribution | None:
    return distribution([r.server_timings[key] for r in records if r.server_timings.get(key)])


def summarize(
    spec: LoadSpec,
    records: list[LoadRequest],
    *,
    warmup_requests: int = 0,
    warmup_errors: int = 0,
) -> LoadSummary:
    """The run's figures from every measured request (see the module docstring)."""
    ok = [r for r in records if r.ok]
    ends = [r.sent_s + (r.e2e_s or 0.0) for r in records]
    window_s = max(ends) - min(r.sent_s for r in records) if records else 0.0
    per_s = 1 / window_s if window_s > 0 else 0.0
    output = sum(r.output_tokens for r in ok)
    per_user = [
        (len(r.chunk_s) - 1) / (r.chunk_s[-1] - r.chunk_s[0])
        for r in ok
        if len(r.chunk_s) >= 2 and r.chunk_s[-1] > r.chunk_s[0]
    ]
    good = sum(meets(r, spec.slo) for r in ok) if spec.slo is not None else None
    return LoadSummary(
        mode=spec.mode,
        concurrency=spec.concurrency,
        request_rate=spec.request_rate,
        slots=spec.server_slots(),
        requests=len(records),
        ok=len(ok),
        errors=len(records) - len(ok),
        error_kinds=dict(Counter(r.error_kind or "unknown" for r in records if not r.ok)),
        warmup_requests=warmup_requests,
        warmup_errors=warmup_errors,
        window_s=window_s,
        request_throughput=len(ok) * per_s,
        throughput=output * per_s,
        prompt_tokens=sum(r.prompt_tokens for r in ok),
        output_tokens=output,
        ttft_s=distribution([r.ttft_s for r in ok if r.ttft_s is not None]),
        itl_s=distribution([g for r in ok for g in gaps(r)]),
        e2e_s=distribution([r.e2e_s for r in ok if r.e2e_s is not None]),
        tps_per_user=distribution(per_user),
        server_decode_tps=_server(ok, "predicted_per_second"),
        server_prompt_tps=_server(ok, "prompt_per_second"),
        slo=spec.slo,
        good=good,
        goodput=None if good is None else good * per_s,
    )
