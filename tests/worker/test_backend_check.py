"""Every llama.cpp run says what it ran on: -ngl always explicit, and the real CPU build's own
report checked against the job's backend label (jobs/backends.py), through the runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.result import Status
from jobs.spec import JobSpec, Workload
from worker.config import WorkerConfig
from worker.engines import RunTarget, close_engines, get_engine
from worker.runner import execute

pytestmark = pytest.mark.integration
BINARY_ENGINES = ("llama-bench", "llama-server")


@pytest.fixture(autouse=True)
def _stop_warm_servers() -> Iterator[None]:
    yield
    close_engines()


def _job(engine: str, backend: str, gpu_layers: int | None = None) -> JobSpec:
    return JobSpec(
        campaign="labels",
        host="box",
        engine=engine,
        model="tiny:q8_0",
        backend=backend,
        context=64,
        workload=Workload(prompt_tokens=16, gen_tokens=8, warmup_runs=0),
        repetitions=1,
        gpu_layers=gpu_layers,
    )


def _ngl(argv: list[str]) -> str:
    assert argv.count("-ngl") == 1, argv
    return argv[argv.index("-ngl") + 1]


@pytest.mark.parametrize("engine", BINARY_ENGINES)
def test_a_cpu_job_passes_ngl_0_and_the_cpu_build_agrees(
    engine: str, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    target = RunTarget(llama_bin / engine, tiny_models["tiny:q8_0"], 120, threads=1)
    outcome = get_engine(engine).run(_job(engine, "cpu"), target)
    assert outcome.status is Status.OK, outcome.error
    assert _ngl(outcome.argv) == "0"
    check = outcome.backend_check
    assert check is not None and check.verdict == "match", check
    assert check.devices == ["CPU"]  # this build has no GPU backend: llama.cpp says so
    assert check.gpu_layers_offloaded == 0
    assert check.gpu_layers_requested == 0


@pytest.mark.parametrize("engine", BINARY_ENGINES)
def test_gpu_labels_ask_for_every_layer_or_the_matrix_s_count(
    engine: str, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    target = RunTarget(llama_bin / engine, tiny_models["tiny:q8_0"], 120, threads=1)
    every = get_engine(engine).run(_job(engine, "vulkan"), target)
    assert _ngl(every.argv) == "999"
    some = get_engine(engine).run(_job(engine, "vulkan", gpu_layers=3), target)
    assert _ngl(some.argv) == "3"
    # A CPU build offloads nothing, whatever -ngl asks: the same verdict from both reports.
    for outcome in (every, some):
        assert outcome.backend_check is not None
        assert outcome.backend_check.verdict == "mismatch"
        assert outcome.backend_check.gpu_layers_offloaded == 0


@pytest.fixture
def mislabelled_config(llama_bin: Path, tiny_models: dict[str, Path]) -> WorkerConfig:
    """A worker config that files the CPU build under `vulkan:` (the issue's case)."""
    return WorkerConfig.model_validate(
        {
            "host": "box",
            "engines": {
                engine: {"backends": {"vulkan": llama_bin / engine, "cpu": llama_bin / engine}}
                for engine in BINARY_ENGINES
            },
            "models": tiny_models,
            "threads": 1,
            "telemetry_interval_s": 0,
        }
    )


@pytest.mark.parametrize(
    ("engine", "evidence"),
    [("llama-bench", "backends 'CPU'"), ("llama-server", "llama-server load log")],
)
def test_a_cpu_build_labelled_vulkan_is_mislabelled_with_the_evidence(
    engine: str, evidence: str, mislabelled_config: WorkerConfig, redis_client: Any
) -> None:
    payload = _job(engine, "vulkan").model_dump(mode="json")
    result = execute(payload, mislabelled_config, redis_client)
    assert result is not None
    assert result.status is Status.MISLABELLED
    assert result.error is not None and "not run on backend vulkan" in result.error
    assert "reported only the CPU" in result.error and evidence in result.error
    check = result.backend_check
    assert check is not None and check.verdict == "mismatch" and check.label == "vulkan"
    assert result.measurements  # the figures are kept; the status keeps them out of reports

    cpu = execute(_job(engine, "cpu").model_dump(mode="json"), mislabelled_config, redis_client)
    assert cpu is not None and cpu.status is Status.OK, cpu.error
    assert cpu.backend_check is not None and cpu.backend_check.verdict == "match"
