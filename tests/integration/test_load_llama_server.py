"""Serving under load on a real llama-server (the tiny model, -np 4): a concurrency sweep and a
Poisson rate through the engine adapter, as a job runs them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.result import Status
from jobs.spec import JobSpec, Workload
from worker.engines import RunTarget, close_engines, get_engine
from worker.engines.llama_server import LlamaServer

pytestmark = pytest.mark.integration
REQUESTS = 8


def _job(**load: object) -> JobSpec:
    workload = Workload.model_validate(
        {"prompt_tokens": 32, "gen_tokens": 16, "slots": 4, "requests": REQUESTS,
         "warmup_requests": 2, "slo": {"ttft_s": 60}, **load}
    )  # fmt: skip
    return JobSpec(campaign="load", host="box", engine="llama-server", model="tiny:q8_0",
                   backend="cpu", context=2048, workload=workload, repetitions=1)  # fmt: skip


@pytest.fixture
def server(llama_bin: Path) -> Iterator[LlamaServer]:
    engine = get_engine("llama-server")
    assert isinstance(engine, LlamaServer)
    yield engine
    close_engines()


def test_concurrency_sweep_and_poisson_rate(
    server: LlamaServer, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    pids: list[int] = []
    target = RunTarget(llama_bin / "llama-server", tiny_models["tiny:q8_0"], 300, 2, pids.append)
    jobs = [_job(concurrency=c) for c in (1, 2, 4)] + [_job(request_rate=8.0, seed=1)]
    outcomes = [server.run(job, target) for job in jobs]

    for outcome in outcomes:
        assert outcome.status is Status.OK, outcome.error
        assert "-np" in outcome.argv and outcome.argv[outcome.argv.index("-np") + 1] == "4"
        assert outcome.load is not None and outcome.measurements == []
        assert outcome.load.slots == 4 and outcome.load.slot_context == 2048 // 4
        (run,) = outcome.load.runs
        s = run.summary
        # The load run is the job's phase: telemetry is summarised over it (per load level).
        (window,) = outcome.phases
        assert window.phase == "run" and window.start_s < window.end_s
        assert window.tokens == s.output_tokens
        # Every request counted, none failed, the warm-up apart.
        assert (s.requests, s.ok, s.errors, s.warmup_requests) == (REQUESTS, REQUESTS, 0, 2)
        assert sorted(r.index for r in run.records) == list(range(REQUESTS))
        for r in run.records:
            assert r.prompt_tokens == 32 and r.output_tokens == 16  # exact, from usage
            assert r.server_timings["prompt_n"] == 32 and r.server_timings["predicted_n"] == 16
            assert r.ttft_s is not None and r.e2e_s is not None and 0 < r.ttft_s <= r.e2e_s
            assert len(r.chunk_s) == 16  # one event per token (llama-server)
        for dist in (s.ttft_s, s.itl_s, s.e2e_s, s.tps_per_user, s.server_decode_tps):
            assert dist is not None
            assert dist.min <= dist.p50 <= dist.p90 <= dist.p99 <= dist.max
        assert s.ttft_s is not None and s.ttft_s.n == REQUESTS
        assert s.itl_s is not None and s.itl_s.n == REQUESTS * 15
        assert s.output_tokens == REQUESTS * 16 and s.throughput > 0
        assert s.good == REQUESTS and s.goodput == pytest.approx(REQUESTS / s.window_s)
        assert run.client.loop_cpu_s > 0 and run.client.wall_s > 0
        assert run.client.client_bound == bool(run.client.reasons)
    # One server for the whole sweep: the same slots, so the same load group.
    assert outcomes[0].load_time_s is not None
    assert all(o.load_time_s is None for o in outcomes[1:])
    assert len(set(pids)) == 1
    # Closed loops at 1, 2, 4 users; the last is the open loop, on its seeded schedule.
    assert [o.load.runs[0].summary.concurrency for o in outcomes if o.load] == [1, 2, 4, None]
    open_run = outcomes[-1].load.runs[0] if outcomes[-1].load else None
    assert open_run is not None and open_run.summary.mode == "open"
    assert all(r.scheduled_s is not None and r.sent_s >= r.scheduled_s for r in open_run.records)


def test_a_load_the_slots_cannot_hold_is_refused(
    server: LlamaServer, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    # -c 1024 over 4 slots: 256 tokens a slot (llama.cpp's least), and a request needs 300 + 16.
    job = _job(concurrency=4, prompt_tokens=300).model_copy(update={"context": 1024})
    job = JobSpec.model_validate({**job.model_dump(), "job_id": ""})
    target = RunTarget(llama_bin / "llama-server", tiny_models["tiny:q8_0"], 300, 2)
    outcome = server.run(job, target)
    assert outcome.status is Status.ERROR
    assert outcome.error is not None and "slots holds 256" in outcome.error
