"""The llama-server adapter on the real tiny model: timing that agrees, a server kept warm."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.result import Status
from jobs.spec import JobSpec, Workload
from worker.engines import RunTarget, close_engines, get_engine
from worker.engines.llama_server import LlamaServer


def _job(context: int = 512, repetitions: int = 3, prompt: int = 64) -> JobSpec:
    return JobSpec(
        campaign="t",
        host="box",
        engine="llama-server",
        model="tiny:q8_0",
        backend="cpu",
        context=context,
        workload=Workload(prompt_tokens=prompt, gen_tokens=32),
        repetitions=repetitions,
    )


@pytest.fixture
def server(llama_bin: Path) -> Iterator[LlamaServer]:
    engine = get_engine("llama-server")
    assert isinstance(engine, LlamaServer)
    yield engine
    close_engines()


def _target(llama_bin: Path, model: Path, pids: list[int] | None = None) -> RunTarget:
    sink = pids.append if pids is not None else (lambda _pid: None)
    return RunTarget(llama_bin / "llama-server", model, 120, 1, sink)


def test_client_ttft_agrees_with_the_server_timing(
    server: LlamaServer, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    outcome = server.run(_job(), _target(llama_bin, tiny_models["tiny:q8_0"]))

    assert outcome.status is Status.OK, outcome.error
    assert outcome.load_time_s is not None and outcome.load_time_s > 0
    assert len(outcome.requests) == 3  # the warm-up request is not counted
    for r in outcome.requests:
        assert (r.prompt_tokens, r.gen_tokens) == (64, 32)  # exact prompt, no early stop
        assert r.server_timings["prompt_n"] == 64 and r.server_timings["predicted_n"] == 32
        assert not r.cached_prompt
        server_prefill_s = r.server_timings["prompt_ms"] / 1000
        # The client's TTFT is the server's prefill plus one decode step plus loopback HTTP:
        # never shorter (how much longer depends on how busy the box is, so no bound here).
        assert server_prefill_s <= r.ttft_s < r.e2e_s
        assert set(r.itl_s) == {"p50", "p90", "p99"}
        assert r.itl_s["p50"] <= r.itl_s["p90"] <= r.itl_s["p99"]
    phases = [p.phase for p in outcome.phases]
    assert phases == ["prefill", "decode"] * 3
    assert all(p.start_s <= p.end_s for p in outcome.phases)
    # tg is the engine's own figure for every request (a starved client cannot distort it)
    tg = next(m for m in outcome.measurements if m.test == "tg")
    assert tg.samples_ts == [r.server_timings["predicted_per_second"] for r in outcome.requests]


def test_the_server_stays_warm_within_a_group_and_restarts_across(
    server: LlamaServer, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    pids: list[int] = []
    target = _target(llama_bin, tiny_models["tiny:q8_0"], pids)
    first = server.run(_job(repetitions=1), target)
    second = server.run(_job(repetitions=2, prompt=32), target)  # same model/context: warm

    assert first.load_time_s is not None and second.load_time_s is None
    assert len(set(pids)) == 1

    third = server.run(_job(context=1024, repetitions=1), target)  # new group: reloaded
    assert third.status is Status.OK and third.load_time_s is not None
    assert len(set(pids)) == 2
    old = pids[0]
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)  # the previous group's server is gone

    get_engine("llama-bench")  # another engine about to run: the warm server is stopped
    with pytest.raises(ProcessLookupError):
        os.kill(pids[-1], 0)


def test_a_model_that_does_not_load_is_load_failed_with_the_log(
    server: LlamaServer, llama_bin: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    outcome = server.run(_job(), _target(llama_bin, broken))
    assert outcome.status is Status.LOAD_FAILED
    assert outcome.error and "exited while loading" in outcome.error
    assert "load" in outcome.error.lower()


def test_a_fixed_prompt_text_is_sent_as_text(
    server: LlamaServer, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    job = JobSpec(
        campaign="t",
        host="box",
        engine="llama-server",
        model="tiny:q8_0",
        backend="cpu",
        context=512,
        workload=Workload(prompt_text="编写一个科技公司的官网的HTML", gen_tokens=16),
        repetitions=2,
    )
    outcome = server.run(job, _target(llama_bin, tiny_models["tiny:q8_0"]))
    assert outcome.status is Status.OK, outcome.error
    # the tiny vocabulary spells Chinese in byte tokens: many more tokens than characters
    counts = {r.prompt_tokens for r in outcome.requests}
    assert len(counts) == 1 and counts.pop() > len("编写一个科技公司的官网的HTML")
    pp = next(m for m in outcome.measurements if m.test == "pp")
    assert pp.n_prompt == outcome.requests[0].prompt_tokens
