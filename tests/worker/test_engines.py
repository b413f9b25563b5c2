"""Engine adapters: every registered engine on the real tiny model, and how runs fail."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from jobs.result import Status
from jobs.spec import JobSpec, Workload
from tests.worker.replay_servers import replay_lmstudio, replay_ollama
from worker.engines import RunTarget, close_engines, get_engine, registered
from worker.engines.llama_bench import LlamaBench
from worker.engines.server_process import ServerProcess, free_port

# How each registered engine is reached in these tests: a binary of the llama.cpp build, a
# real llama-server behind the OpenAI-compatible route, or the Ollama stand-in.
ENGINE_KINDS = {
    "llama-bench": "binary",
    "llama-server": "binary",
    "openai": "llama-server /v1",
    "ollama": "replay",
    "lmstudio": "replay",
}


def _job(engine: str = "llama-bench", context: int = 256, repetitions: int = 2) -> JobSpec:
    return JobSpec(
        campaign="t",
        host="box",
        engine=engine,
        model="tiny:q8_0",
        backend="vulkan" if engine == "lmstudio" else "cpu",  # the stand-in's runtime
        context=context,
        workload=Workload(prompt_tokens=32, gen_tokens=16),
        repetitions=repetitions,
    )


@pytest.fixture(autouse=True)
def _stop_warm_servers() -> Iterator[None]:
    yield
    close_engines()


@contextmanager
def _target(engine: str, llama_bin: Path, model: Path, pids: list[int]) -> Iterator[RunTarget]:
    kind = ENGINE_KINDS[engine]
    if kind == "binary":
        yield RunTarget(llama_bin / engine, model, 120, 1, pids.append)
    elif kind == "replay" and engine == "ollama":
        with replay_ollama() as (url, _state):
            yield RunTarget(None, None, 120, url=url, served_model="tiny:q8_0")
    elif kind == "replay":
        with replay_lmstudio() as (url, _state):
            yield RunTarget(None, None, 120, url=url, served_model="tiny-q8_0")
    else:
        argv = [str(llama_bin / "llama-server"), "-m", str(model), "--host", "127.0.0.1",
                "--port", str(free_port()), "-c", "1024", "-t", "1"]  # fmt: skip
        server = ServerProcess(argv)
        server.start()
        try:
            assert server.wait_ready(60), server.log_tail()
            yield RunTarget(None, None, 120, url=server.url + "/v1", served_model="tiny")
        finally:
            server.stop()


def test_every_registered_engine_is_covered_here() -> None:
    assert sorted(ENGINE_KINDS) == registered()


@pytest.mark.parametrize("engine", registered())
def test_engine_measures_the_tiny_model(
    engine: str, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    pids: list[int] = []
    with _target(engine, llama_bin, tiny_models["tiny:q8_0"], pids) as target:
        outcome = get_engine(engine).run(_job(engine), target)

    assert outcome.status is Status.OK, outcome.error
    tg = next(m for m in outcome.measurements if m.test == "tg")
    assert len(tg.samples_ts) == 2 and all(ts > 0 for ts in tg.samples_ts)
    if engine in ("llama-server", "openai"):
        # llama-server's own decode rate (also behind /v1): a starved client cannot lose it
        server = [r.server_timings["predicted_per_second"] for r in outcome.requests]
        assert tg.samples_ts == pytest.approx(server)
    assert tg.n_gen == 16
    pp = [m for m in outcome.measurements if m.test == "pp"]
    assert [len(m.samples_ts) for m in pp] == [2]  # every engine here reports its prefill
    if ENGINE_KINDS[engine] == "binary":
        assert outcome.argv[0] == str(target.binary)
        assert pids and all(pid > 0 for pid in pids)  # telemetry can follow the engine process
    if engine != "llama-bench":  # request engines: client timing, phases for telemetry
        assert len(outcome.requests) == 2
        assert all(0 < r.ttft_s < r.e2e_s for r in outcome.requests)
        assert [p.phase for p in outcome.phases] == ["prefill", "decode"] * 2


def test_llama_bench_keeps_its_samples_depth_and_build(
    llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    target = RunTarget(llama_bin / "llama-bench", tiny_models["tiny:q8_0"], 120, 1)
    outcome = get_engine("llama-bench").run(_job(), target)
    for m in outcome.measurements:
        assert len(m.samples_ns) == 2
        assert m.n_depth == 256 - 32 - 16
    assert outcome.engine.build_commit
    assert "llama" in str(outcome.engine.details["model_type"])


def test_llama_bench_argv_fills_the_context_and_is_a_list() -> None:
    target = RunTarget(Path("/opt/llama-bench"), Path("/m/x.gguf"), 60, threads=4)
    argv = LlamaBench.argv(_job(context=4096, repetitions=5), target)
    assert argv == [
        "/opt/llama-bench", "-m", "/m/x.gguf", "-p", "32", "-n", "16", "-d", "4048",
        "-r", "5", "-o", "json", "-ngl", "0", "-dev", "none", "-t", "4",  # cpu: no GPU at all
    ]  # fmt: skip


def test_a_model_that_does_not_load_is_a_load_failed_result(
    tmp_path: Path, llama_bin: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    outcome = LlamaBench().run(_job(), RunTarget(llama_bin / "llama-bench", broken, 60))
    assert outcome.status is Status.LOAD_FAILED
    assert outcome.error and "exit code" in outcome.error
    assert "load" in outcome.error.lower()


def test_a_run_past_its_timeout_is_killed_and_reported(
    llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    slow = _job(context=8000, repetitions=50)
    target = RunTarget(llama_bin / "llama-bench", tiny_models["tiny:q8_0"], timeout_s=1.0)
    outcome = LlamaBench().run(slow, target)
    assert outcome.status is Status.TIMEOUT
    assert outcome.error and outcome.error.startswith("killed after 1 s")


def test_a_missing_binary_is_an_error_result(tmp_path: Path) -> None:
    target = RunTarget(tmp_path / "no-such-llama-bench", tmp_path / "m.gguf", 10)
    outcome = LlamaBench().run(_job(), target)
    assert outcome.status is Status.ERROR
    assert outcome.error and "cannot start" in outcome.error


@pytest.mark.parametrize(
    ("program", "expected"),
    [("false", "exit code 1"), ("echo", "unreadable llama-bench JSON")],
)
def test_an_engine_that_misbehaves_is_an_error_result(
    tmp_path: Path, program: str, expected: str
) -> None:
    binary = shutil.which(program)
    assert binary is not None
    outcome = LlamaBench().run(_job(), RunTarget(Path(binary), tmp_path / "m.gguf", 10))
    assert outcome.status is Status.ERROR
    assert outcome.error and expected in outcome.error
