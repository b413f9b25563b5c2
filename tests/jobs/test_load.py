"""The load part of a workload: how a matrix writes it, what is refused, and job ids."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.load import LoadSpec
from jobs.spec import JobSpec, Workload


def _job(**workload: object) -> JobSpec:
    return JobSpec(campaign="c", host="h", engine="llama-server", model="m", backend="cpu",
                   context=4096, workload=Workload.model_validate(workload))  # fmt: skip


def test_flat_load_keys_are_gathered_under_load() -> None:
    w = Workload.model_validate({
        "concurrency": 4, "requests": 64, "prompt_tokens": {"mean": 512, "stddev": 128},
        "gen_tokens": 64, "slo": {"ttft_s": 2, "itl_ms": 100},
    })  # fmt: skip
    assert w.prompt_tokens == 512 and w.gen_tokens == 64
    assert w.load is not None
    assert (w.load.concurrency, w.load.requests, w.load.prompt_tokens_stddev) == (4, 64, 128.0)
    assert w.load.mode == "closed" and w.load.server_slots() == 4
    assert w.load.slo is not None and w.load.slo.itl_ms == 100
    # The JSON a job carries round-trips (nested `load`).
    assert Workload.model_validate(w.model_dump(mode="json")) == w


def test_a_workload_without_load_serializes_and_hashes_as_before() -> None:
    plain = _job(prompt_tokens=64, gen_tokens=32)
    assert "load" not in plain.model_dump(mode="json")["workload"]
    # The id every earlier orch gave this job (computed before the field existed).
    assert plain.job_id == JobSpec.model_validate_json(plain.model_dump_json()).job_id
    loaded = _job(prompt_tokens=64, gen_tokens=32, concurrency=2, requests=8)
    assert loaded.job_id != plain.job_id
    assert loaded.load_group() != plain.load_group()  # another -np: another server
    assert _job(request_rate=1, requests=8, slots=4).load_group()[-1] == "4"


def test_known_id_of_a_plain_job_is_unchanged() -> None:
    # Pinned: a JobSpec id from before load workloads existed must not move.
    job = JobSpec(campaign="c", host="h", engine="llama-server", model="m", backend="cpu",
                  context=4096)  # fmt: skip
    assert job.job_id == "5cc8580e946f301c"


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        ({"concurrency": 2, "request_rate": 1, "requests": 4}, "exactly one of concurrency"),
        ({"concurrency": 2}, "exactly one of requests"),
        ({"concurrency": 2, "requests": 4, "duration_s": 9}, "exactly one of requests"),
        ({"request_rate": 2, "requests": 4}, "request_rate needs slots"),
        ({"requests": 4}, "add concurrency"),
        ({"prompt_tokens": {"mean": 64, "stddev": 8}}, "add concurrency"),
        ({"concurrency": 0, "requests": 4}, "greater than or equal to 1"),
        ({"request_rate": "inf", "requests": 4, "slots": 1}, "finite"),
        ({"request_rate": -1, "requests": 4, "slots": 1}, "greater than 0"),
        ({"concurrency": 1, "requests": 10**9}, "less than or equal"),
        ({"concurrency": 1, "duration_s": 1e9}, "less than or equal"),
        ({"concurrency": 1, "requests": 4, "slo": {}}, "at least one of ttft_s"),
        ({"concurrency": 1, "requests": 4, "slo": {"ttft": 2}}, "Extra inputs"),
        ({"concurrency": 1, "requests": 4, "prompt_tokens": {"mean": 8, "sd": 1}}, "mean: N"),
        ({"concurrency": 1, "requests": 4, "gen_tokens": {"mean": 8, "stddev": "x"}}, "stddev"),
        ({"concurrency": 1, "requests": 4, "warmup_runs": 2}, "warmup_requests"),
        ({"concurrency": 1, "requests": 4, "load": {"concurrency": 2}}, "not both"),
        ({"concurrency": 1, "requests": 4, "sede": 3}, "Extra inputs"),
    ],
)
def test_malformed_load_is_refused_with_a_reason(workload: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Workload.model_validate(workload)


def test_open_loop_spec() -> None:
    spec = LoadSpec(request_rate=0.5, duration_s=60, slots=4, seed=9)
    assert spec.mode == "open" and spec.server_slots() == 4 and spec.warmup_requests == 1


def test_an_open_loop_that_would_plan_more_than_max_requests_is_refused() -> None:
    """Its arrivals are all planned (in memory) before the run: rate x duration is bounded as
    `requests` is, or a hostile rate hangs the worker drawing them."""
    from jobs.load import MAX_REQUESTS

    with pytest.raises(ValidationError, match="request_rate x duration_s"):
        LoadSpec(request_rate=1e9, duration_s=86_400, slots=1)
    LoadSpec(request_rate=MAX_REQUESTS / 100, duration_s=100, slots=1)  # exactly the bound


def test_a_spread_beyond_a_million_tokens_is_refused() -> None:
    with pytest.raises(ValidationError, match="prompt_tokens_stddev"):
        Workload.model_validate(
            {"concurrency": 2, "requests": 4, "prompt_tokens": {"mean": 64, "stddev": 1e308}}
        )
