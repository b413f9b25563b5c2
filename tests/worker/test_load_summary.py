"""Load-run statistics on hand-made requests (exact values), and the seeded plan."""

from __future__ import annotations

import math

import pytest

from jobs.load import (
    E2E_P90,
    ERRORS,
    GOODPUT,
    ITL_P50,
    LOAD_METRICS,
    THROUGHPUT,
    TPS_PER_USER,
    TTFT_P50,
    LoadRequest,
    LoadSpec,
    Slo,
)  # fmt: skip
from worker.load.plan import Lengths, open_loop_plan, poisson_arrivals
from worker.load.summary import distribution, meets, percentile, summarize


def _req(index: int, sent: float, chunks: list[float], e2e: float, tokens: int,
         **extra: object) -> LoadRequest:  # fmt: skip
    return LoadRequest(index=index, sent_s=sent, prompt_tokens=10, gen_tokens_requested=tokens,
                       output_tokens=tokens, ttft_s=chunks[0] if chunks else None, e2e_s=e2e,
                       chunk_s=chunks, **extra)  # fmt: skip


def test_percentile_interpolates_between_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 10.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(4.0 + 0.6 * 6.0)  # rank 3.6
    assert percentile([7.0], 99) == 7.0
    d = distribution([4.0, 1.0, 3.0, 2.0])
    assert d is not None
    assert (d.n, d.mean, d.min, d.p50, d.max) == (4, 2.5, 1.0, 2.5, 4.0)
    assert d.p99 == pytest.approx(3.97)
    assert distribution([]) is None


def test_summary_of_hand_made_requests() -> None:
    records = [
        # sent 0: first token at 0.5, gaps 0.1 and 0.3, ends at 1.0
        _req(0, 0.0, [0.5, 0.6, 0.9], 1.0, 3, server_timings={"predicted_per_second": 20.0}),
        # sent 1: first token at 1.0 (relative), one gap of 0.2, ends at 3.0
        _req(1, 1.0, [1.0, 1.2], 2.0, 2, server_timings={"predicted_per_second": 30.0}),
        # failed after 0.5 s: counted, never in a latency figure
        LoadRequest(index=2, sent_s=2.0, prompt_tokens=10, gen_tokens_requested=3,
                    e2e_s=0.5, chunk_s=[0.1], error="HTTP 500", error_kind="http"),
    ]  # fmt: skip
    spec = LoadSpec(concurrency=2, requests=3, slo=Slo(ttft_s=0.6, itl_ms=250))
    s = summarize(spec, records, warmup_requests=2, warmup_errors=1)

    assert (s.requests, s.ok, s.errors, s.error_kinds) == (3, 2, 1, {"http": 1})
    assert (s.warmup_requests, s.warmup_errors, s.slots, s.mode) == (2, 1, 2, "closed")
    assert s.window_s == 3.0  # first sent at 0, last end at 1 + 2
    assert s.request_throughput == pytest.approx(2 / 3)
    assert s.throughput == pytest.approx(5 / 3) and s.output_tokens == 5 and s.prompt_tokens == 20
    assert s.ttft_s is not None and (s.ttft_s.n, s.ttft_s.min, s.ttft_s.max) == (2, 0.5, 1.0)
    assert s.ttft_s.p50 == pytest.approx(0.75) and s.ttft_s.p90 == pytest.approx(0.95)
    assert s.itl_s is not None and s.itl_s.n == 3  # gaps 0.1, 0.3, 0.2 pooled
    assert s.itl_s.p50 == pytest.approx(0.2) and s.itl_s.max == pytest.approx(0.3)
    assert s.e2e_s is not None and s.e2e_s.p90 == pytest.approx(1.9)
    # per user: 2 gaps over 0.4 s = 5 tokens/s; 1 gap over 0.2 s = 5 tokens/s
    assert s.tps_per_user is not None and s.tps_per_user.p50 == pytest.approx(5.0)
    assert s.server_decode_tps is not None and s.server_decode_tps.mean == 25.0
    # SLO: request 0 (TTFT 0.5, mean ITL 200 ms) meets both; request 1 misses the TTFT.
    assert s.good == 1 and s.goodput == pytest.approx(1 / 3)
    assert s.metric(GOODPUT) == pytest.approx(1 / 3)
    assert s.metric(THROUGHPUT) == pytest.approx(5 / 3)
    assert s.metric(TTFT_P50) == pytest.approx(0.75) and s.metric(ITL_P50) == pytest.approx(0.2)
    assert s.metric(E2E_P90) == pytest.approx(1.9) and s.metric(ERRORS) == 1.0
    assert s.metric(TPS_PER_USER) == pytest.approx(5.0)
    assert set(LOAD_METRICS) >= {THROUGHPUT, GOODPUT, ERRORS}
    with pytest.raises(KeyError, match="unknown load metric"):
        s.metric("nope")


def test_slo_needs_every_figure_it_names() -> None:
    one_token = _req(0, 0.0, [0.1], 0.2, 1)
    assert meets(one_token, Slo(ttft_s=1.0))
    assert not meets(one_token, Slo(itl_ms=100))  # no gap: no ITL to meet it with
    failed = one_token.model_copy(update={"error": "x", "error_kind": "server"})
    assert not meets(failed, Slo(ttft_s=1.0))


def test_a_run_without_ok_requests_has_no_latency_figures() -> None:
    spec = LoadSpec(request_rate=1.0, requests=1, slots=1)
    bad = LoadRequest(index=0, sent_s=0.0, prompt_tokens=1, gen_tokens_requested=1, e2e_s=1.0,
                      error="refused", error_kind="connection")  # fmt: skip
    s = summarize(spec, [bad])
    assert (s.ok, s.errors, s.throughput, s.ttft_s, s.goodput) == (0, 1, 0.0, None, None)
    assert s.metric(TTFT_P50) is None


def test_poisson_arrivals_are_seeded_and_exponential() -> None:
    rate = 4.0
    arrivals = poisson_arrivals(rate, seed=11, count=4000)
    assert arrivals == poisson_arrivals(rate, seed=11, count=4000)
    assert arrivals != poisson_arrivals(rate, seed=12, count=4000)
    gaps = [b - a for a, b in zip([0.0, *arrivals], arrivals, strict=False)]
    assert all(g > 0 for g in gaps)
    # Kolmogorov-Smirnov against Exp(rate): the seed fixes the sample, so this is exact for it;
    # 1.63 / sqrt(n) is the 1% critical value.
    ordered = sorted(gaps)
    n = len(ordered)
    ks = max(max((i + 1) / n - (1 - math.exp(-rate * g)), (1 - math.exp(-rate * g)) - i / n)
             for i, g in enumerate(ordered))  # fmt: skip
    assert ks < 1.63 / math.sqrt(n)
    within = poisson_arrivals(rate, seed=11, duration_s=10.0)
    assert within == [a for a in arrivals if a < 10.0]


def test_drawn_lengths_are_seeded_and_bounded() -> None:
    spec = LoadSpec(request_rate=2, requests=500, slots=2, seed=5,
                    prompt_tokens_stddev=30, gen_tokens_stddev=200)  # fmt: skip
    plan = open_loop_plan(spec, prompt_tokens=100, gen_tokens=64)
    assert len(plan) == 500 and [p.index for p in plan] == list(range(500))
    prompts = [p.prompt_tokens for p in plan]
    gens = [p.gen_tokens for p in plan]
    assert all(1 <= p <= 100 + 120 for p in prompts) and all(1 <= g <= 64 + 800 for g in gens)
    assert min(gens) == 1  # stddev far above the mean: clipped at one token
    assert 90 < sum(prompts) / len(prompts) < 110
    fixed = Lengths(LoadSpec(concurrency=1, requests=1), 100, 64)
    assert {fixed.next() for _ in range(5)} == {(100, 64)}
