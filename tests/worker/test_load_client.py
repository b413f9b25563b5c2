"""The load client against a stand-in server (tests/worker/load_stub.py): every request counted,
slow and failing ones visible in the figures, open-loop arrivals as planned."""

from __future__ import annotations

import time

from jobs.load import LoadSpec, Slo
from tests.worker.load_stub import Script, stub_server
from worker.load.client import Endpoint, run_load
from worker.load.plan import poisson_arrivals

SLOW_S = 0.3


def _run(url: str, spec: LoadSpec, prompt: int = 16, gen: int = 8):
    return run_load(
        spec,
        Endpoint(url),
        prompt_for=lambda n: list(range(n)),
        prompt_tokens=prompt,
        gen_tokens=gen,
        deadline=time.monotonic() + 300,
    )


def test_slow_and_failing_requests_are_counted_and_shown() -> None:
    # One user, so the stand-in's n-th request is the client's n-th (after one warm-up).
    script = Script(slow={2: SLOW_S}, http_500={4}, stream_error={5})
    spec = LoadSpec(concurrency=1, requests=7, warmup_requests=1, slo=Slo(ttft_s=SLOW_S / 2))
    with stub_server(script) as url:
        run = _run(url, spec)

    s = run.summary
    assert script.received == 8  # 1 warm-up + 7 measured
    assert [r.index for r in run.records] == list(range(7))
    assert (s.requests, s.ok, s.errors, s.warmup_requests) == (7, 5, 2, 1)
    assert s.error_kinds == {"http": 1, "server": 1}
    failed = {r.index: r for r in run.records if not r.ok}
    assert set(failed) == {3, 4}
    assert "HTTP 500" in (failed[3].error or "") and "stub failure" in (failed[4].error or "")
    assert failed[3].output_tokens == 0 and failed[3].ttft_s is None
    # The slow request (the client's index 1) is in the percentiles, and only ok ones are.
    slow = run.records[1]
    assert slow.ok and slow.ttft_s is not None and slow.ttft_s >= SLOW_S
    assert s.ttft_s is not None and s.ttft_s.n == 5
    assert s.ttft_s.max >= SLOW_S and s.ttft_s.p99 >= 0.97 * SLOW_S
    assert s.ttft_s.p50 <= s.ttft_s.p90 <= s.ttft_s.p99 <= s.ttft_s.max
    assert s.good is not None and s.good <= 4  # the slow one misses the TTFT objective
    # Tokens: from the server's usage, for the ok requests only.
    assert s.output_tokens == 5 * 8 and s.prompt_tokens == 5 * 16
    assert all(len(r.chunk_s) == 8 for r in run.records if r.ok)
    assert s.itl_s is not None and s.itl_s.n == 5 * 7
    assert s.server_decode_tps is not None and s.server_decode_tps.n == 5
    # What llama-server takes: token ids, streaming with usage.
    body = script.bodies[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 8 and body["prompt"] == list(range(16))


def test_a_request_past_its_limit_is_a_timeout_record() -> None:
    script = Script(hang={1: 1.5})
    spec = LoadSpec(concurrency=1, requests=3, warmup_requests=0, request_timeout_s=0.3)
    with stub_server(script) as url:
        run = _run(url, spec)
    assert run.summary.error_kinds == {"timeout": 1}
    timed_out = run.records[1]
    assert timed_out.error_kind == "timeout" and timed_out.e2e_s is not None
    assert timed_out.e2e_s >= 0.3
    assert run.summary.e2e_s is not None and run.summary.e2e_s.n == 2


def test_closed_loop_keeps_at_most_n_requests_in_flight() -> None:
    script = Script(slow={n: 0.05 for n in range(20)})
    spec = LoadSpec(concurrency=3, requests=12, warmup_requests=2)
    with stub_server(script) as url:
        run = _run(url, spec)
    assert script.received == 14
    assert 1 <= script.max_in_flight <= 3
    assert sorted(r.index for r in run.records) == list(range(12))
    assert run.summary.concurrency == 3 and run.summary.slots == 3
    client = run.client
    assert client.wall_s > 0 and client.loop_cpu_s > 0 and client.process_cpu_s >= client.loop_cpu_s
    assert client.loop_lag_s is not None and client.loop_lag_s.n >= 1
    assert client.dispatch_late_s is None  # closed loop: nothing is scheduled
    assert client.client_bound == bool(client.reasons)


def test_open_loop_sends_on_the_seeded_poisson_schedule() -> None:
    spec = LoadSpec(
        request_rate=20,
        requests=10,
        slots=4,
        seed=3,
        warmup_requests=0,
        prompt_tokens_stddev=4,
        gen_tokens_stddev=2,
    )
    with stub_server(Script()) as url:
        run = _run(url, spec)
    due = poisson_arrivals(20, 3, count=10)
    assert [r.scheduled_s for r in run.records] == due
    assert all(r.sent_s >= (r.scheduled_s or 0) for r in run.records)
    assert run.client.dispatch_late_s is not None and run.client.dispatch_late_s.n == 10
    lengths = [(r.prompt_tokens, r.gen_tokens_requested) for r in run.records]
    assert len(set(lengths)) > 1  # drawn, not fixed
    with stub_server(Script()) as url:
        again = _run(url, spec)
    assert [(r.prompt_tokens, r.gen_tokens_requested) for r in again.records] == lengths
    assert run.summary.mode == "open" and run.summary.request_rate == 20


def test_duration_bounds_a_closed_loop() -> None:
    spec = LoadSpec(concurrency=2, duration_s=0.5, warmup_requests=0)
    with stub_server(Script()) as url:
        run = _run(url, spec)
    assert run.summary.requests == len(run.records) >= 2
    assert sorted(r.index for r in run.records) == list(range(len(run.records)))


def test_an_open_loop_waiting_for_an_arrival_stops_at_the_jobs_time_limit() -> None:
    """A slow rate's next arrival can be due long after the job's limit: the client must not
    sleep past the limit waiting for it (the job would overrun its timeout by that much)."""
    import threading

    spec = LoadSpec(request_rate=1e-4, requests=2, slots=1, warmup_requests=0)
    assert poisson_arrivals(1e-4, spec.seed, count=2)[0] > 600  # due far beyond the limit
    outcome: list[BaseException | None] = []

    def run(url: str) -> None:
        try:
            run_load(spec, Endpoint(url), prompt_for=lambda n: list(range(n)), prompt_tokens=16,
                     gen_tokens=8, deadline=time.monotonic() + 1)  # fmt: skip
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    with stub_server(Script()) as url:
        thread = threading.Thread(target=run, args=(url,), daemon=True)
        thread.start()
        thread.join(120)  # generous: the arrival is due after 600 s
    assert not thread.is_alive(), "the open loop slept past the job's time limit"
    assert len(outcome) == 1 and isinstance(outcome[0], TimeoutError)
