"""worker.runner.execute against a real Valkey: duplicates, the redelivery cap, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.protocol import ATTEMPTS_KEY, FINAL_KEY, MAX_DELIVERIES, RESULTS_KEY
from jobs.result import RunResult, Status
from jobs.spec import JobSpec, Workload
from worker.config import WorkerConfig
from worker.runner import execute

pytestmark = pytest.mark.integration


@pytest.fixture
def config(llama_bin: Path, tiny_models: dict[str, Path]) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "host": "box",
            "declared": {"vram_split": "32G"},
            "engines": {"llama-bench": {"backends": {"cpu": llama_bin / "llama-bench"}}},
            "models": tiny_models,
            "threads": 1,
        }
    )


def _payload(model: str = "tiny:q8_0", host: str = "box") -> dict[str, Any]:
    job = JobSpec(
        campaign="c",
        host=host,
        engine="llama-bench",
        model=model,
        backend="cpu",
        context=64,
        configuration={"vram_split": "32G"},
        workload=Workload(prompt_tokens=16, gen_tokens=8),
        repetitions=2,
    )
    return job.model_dump(mode="json")


def _pushed(redis_client: Any) -> list[RunResult]:
    return [RunResult.model_validate_json(r) for r in redis_client.lrange(RESULTS_KEY, 0, -1)]


def test_a_job_runs_and_its_result_is_pushed_once(config: WorkerConfig, redis_client: Any) -> None:
    payload = _payload()
    result = execute(payload, config, redis_client)

    assert result is not None and result.status is Status.OK
    assert result.job is not None and result.job.job_id == payload["job_id"]
    assert redis_client.get(FINAL_KEY.format(job_id=payload["job_id"])) == b"ok"
    # a redelivery of the same message after its result was pushed does not run it again
    assert execute(payload, config, redis_client) is None
    assert [r.job_id for r in _pushed(redis_client)] == [payload["job_id"]]


def test_a_job_that_keeps_killing_its_worker_is_given_up(
    config: WorkerConfig, redis_client: Any
) -> None:
    payload = _payload()
    redis_client.set(ATTEMPTS_KEY.format(job_id=payload["job_id"]), MAX_DELIVERIES)

    result = execute(payload, config, redis_client)

    assert result is not None and result.status is Status.ERROR
    assert result.attempt == MAX_DELIVERIES + 1
    assert result.error and f"gave up after {MAX_DELIVERIES} deliveries" in result.error
    assert result.measurements == []


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            _payload(model="glm:q4"),
            "model 'glm:q4' is not configured (have: tiny:q4_k_m, tiny:q8_0)",
        ),
        (
            _payload(host="other"),
            "job for orch.other.vram-32G reached orch.box.vram-32G (host box)",
        ),
    ],
)
def test_a_job_this_box_cannot_run_is_an_error_result(
    config: WorkerConfig, redis_client: Any, payload: dict[str, Any], expected: str
) -> None:
    result = execute(payload, config, redis_client)
    assert result is not None and result.status is Status.ERROR
    assert result.error == expected
    assert result.job is not None  # the result still says which job it was


def test_a_tampered_message_is_refused(config: WorkerConfig, redis_client: Any) -> None:
    payload = _payload()
    payload["model"] = "tiny:q4_k_m"  # the id no longer matches the spec

    result = execute(payload, config, redis_client)

    assert result is not None and result.status is Status.ERROR
    assert result.error and "does not match its spec" in result.error
    assert execute({"garbage": True}, config, redis_client) is None
    assert len(_pushed(redis_client)) == 1
