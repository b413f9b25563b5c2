"""worker.runner.execute against a real Valkey: duplicates, the redelivery cap, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.acks import ack_id
from jobs.protocol import ATTEMPTS_KEY, FINAL_KEY, MAX_DELIVERIES, RESULTS_KEY
from jobs.result import RunResult, Status
from jobs.spec import JobSpec, Workload
from worker.config import CooldownConfig, EngineConfig, SetterConfig, WorkerConfig
from worker.engines import close_engines
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
    entries = redis_client.xrange(RESULTS_KEY)
    return [RunResult.model_validate_json(fields[b"result"]) for _id, fields in entries]


def test_a_job_runs_and_its_result_is_pushed_once(config: WorkerConfig, redis_client: Any) -> None:
    payload = _payload()
    result = execute(payload, config, redis_client)

    assert result is not None and result.status is Status.OK
    assert result.job is not None and result.job.job_id == payload["job_id"]
    final = redis_client.get(FINAL_KEY.format(job_id=payload["job_id"]))
    assert RunResult.model_validate_json(final) == result
    # a redelivery after the result was pushed does not run the job again: it re-announces
    # the same result, for any store that missed it
    assert execute(payload, config, redis_client) is None
    assert _pushed(redis_client) == [result, result]


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
    ],
)
def test_a_job_this_box_cannot_run_is_an_error_result(
    config: WorkerConfig, redis_client: Any, payload: dict[str, Any], expected: str
) -> None:
    result = execute(payload, config, redis_client)
    assert result is not None and result.status is Status.ERROR
    assert result.error == expected
    assert result.job is not None  # the result still says which job it was


def test_a_job_for_another_host_gets_no_result_and_no_attempt(
    config: WorkerConfig, redis_client: Any
) -> None:
    # A copy that reached the wrong box: its refusal must never become the job's outcome.
    payload = _payload(host="other")
    assert execute(payload, config, redis_client) is None
    assert _pushed(redis_client) == []
    assert redis_client.get(ATTEMPTS_KEY.format(job_id=payload["job_id"])) is None
    assert redis_client.get(FINAL_KEY.format(job_id=payload["job_id"])) is None


def test_a_tampered_message_is_refused(config: WorkerConfig, redis_client: Any) -> None:
    payload = _payload()
    payload["model"] = "tiny:q4_k_m"  # the id no longer matches the spec

    result = execute(payload, config, redis_client)

    assert result is not None and result.status is Status.ERROR
    assert result.error and "does not match its spec" in result.error
    assert result.attempt == 0  # any genuine run (attempt >= 1) supersedes it in the store
    assert execute({"garbage": True}, config, redis_client) is None
    assert len(_pushed(redis_client)) == 1
    # no final mark: the genuine message with that id still runs
    genuine = execute(_payload(), config, redis_client)
    assert genuine is not None and genuine.status is Status.OK


def test_an_adapter_crash_becomes_an_error_result(
    config: WorkerConfig, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(self: object, job: object, target: object) -> None:
        raise ZeroDivisionError("bug in an adapter")

    monkeypatch.setattr("worker.engines.llama_bench.LlamaBench.run", crash)
    result = execute(_payload(), config, redis_client)
    assert result is not None and result.status is Status.ERROR
    assert result.error == "engine adapter crashed: ZeroDivisionError('bug in an adapter')"
    assert _pushed(redis_client) == [result]


def test_a_result_the_broker_cannot_take_is_spooled_then_flushed(
    config: WorkerConfig, redis_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis as redis_lib

    from worker import runner

    monkeypatch.setattr(runner, "_PUSH_RETRY_S", (0, 0))

    class BrokerDown:
        def pipeline(self, transaction: bool = True) -> None:
            raise redis_lib.ConnectionError("connection refused")

    spool = tmp_path / "spool"
    result = runner.push(BrokerDown(), _result_for(config), spool)
    [kept] = spool.iterdir()  # `<ack id>.json`: not in the broker yet
    assert kept.name == f"{ack_id(kept.read_bytes())}.json"
    assert RunResult.model_validate_json(kept.read_bytes()) == result

    assert runner.flush_spool(redis_client, spool) == 1
    assert _pushed(redis_client) == [result]
    assert redis_client.get(FINAL_KEY.format(job_id=result.job_id)) is not None
    # Published, and kept until a store has recorded it (worker/outbox.py).
    [[entry_id, _fields]] = redis_client.xrange(RESULTS_KEY)
    assert [p.name for p in spool.iterdir()] == [f"{kept.stem}.{entry_id.decode()}.json"]


def test_a_result_over_the_size_stores_take_is_published_as_an_error_saying_so(
    config: WorkerConfig, redis_client: Any, tmp_path: Path
) -> None:
    """A result over MAX_RESULT_JSON_BYTES would only be kept aside by every store: the worker
    publishes an error result in its place, naming the largest parts it dropped."""
    from jobs.result import MAX_RESULT_JSON_BYTES, RequestSample
    from worker import runner

    sample = RequestSample(
        prompt_tokens=1, gen_tokens=1, ttft_s=0.1, e2e_s=0.2, decode_tokens_per_s=None
    )
    big = _result_for(config).model_copy(
        update={"requests": [sample] * (MAX_RESULT_JSON_BYTES // len(sample.model_dump_json()))}
    )
    pushed = runner.push(redis_client, big, tmp_path / "spool")

    assert pushed.status is Status.ERROR and pushed.requests == []
    assert pushed.error is not None and pushed.error.startswith("oversized: a result of")
    assert "largest parts: requests" in pushed.error
    assert _pushed(redis_client) == [pushed]


def test_a_result_still_over_the_size_without_its_run_keeps_only_its_identity(
    config: WorkerConfig, redis_client: Any, tmp_path: Path
) -> None:
    """Dropping the run is not enough when the job itself is huge (a forged prompt_text, facts):
    what is published is the job's identity, the reason and the times, within the size."""
    from jobs.result import MAX_RESULT_JSON_BYTES, oversized
    from worker import runner

    result = _result_for(config)
    assert result.job is not None
    huge_job = result.job.model_copy(
        update={"workload": Workload(prompt_text="x" * (MAX_RESULT_JSON_BYTES + 1))}
    )
    pushed = runner.push(redis_client, result.model_copy(update={"job": huge_job}), tmp_path)

    assert pushed.status is Status.ERROR and pushed.job is None
    assert oversized(pushed.model_dump_json()) is None
    assert pushed.job_id == result.job_id and pushed.attempt == result.attempt
    assert _pushed(redis_client) == [pushed]


def _result_for(config: WorkerConfig) -> RunResult:
    from datetime import UTC, datetime

    job = JobSpec.model_validate(_payload())
    now = datetime.now(UTC)
    return RunResult(
        job_id=job.job_id, campaign=job.campaign, host=config.host, queue=config.queue,
        attempt=1, status=Status.OK, started_at=now, finished_at=now, worker_version="t", job=job,
    )  # fmt: skip


def test_a_real_run_stores_psutil_telemetry_split_by_phase(
    config: WorkerConfig, redis_client: Any, llama_bin: Path
) -> None:
    server_config = config.model_copy(
        update={
            "engines": {
                **config.engines,
                "llama-server": EngineConfig(backends={"cpu": llama_bin / "llama-server"}),
            }
        }
    )
    payload = _payload()
    payload = JobSpec.model_validate(
        {**payload, "engine": "llama-server", "job_id": "", "context": 2048,
         "workload": {"prompt_tokens": 512, "gen_tokens": 32}}
    ).model_dump(mode="json")  # fmt: skip
    try:
        result = execute(payload, server_config, redis_client)
    finally:
        close_engines()
    assert result is not None and result.status is Status.OK, result and result.error
    telemetry = result.telemetry
    # at least one sample beyond the baseline and the exit sample the sampler always takes
    assert telemetry is not None and telemetry.samples >= 3
    psutil_status = next(s for s in telemetry.sources if s.name == "psutil")
    assert psutil_status.available
    # every source that is absent here says why, instead of failing the job
    assert all(s.available or s.detail for s in telemetry.sources)
    assert [p.phase for p in telemetry.phases] == ["prefill", "decode"] * 2
    assert all(0 <= p.start_s <= p.end_s for p in telemetry.phases)  # relative to sampling
    run_rss = [p.metrics["rss_bytes"] for p in telemetry.phases if "rss_bytes" in p.metrics]
    assert run_rss and all(m.peak is None or m.peak > 0 for m in run_rss)
    assert any(m.peak for m in run_rss)  # the engine's memory was measured in some phase
    assert len(telemetry.series["t_s"]) == len(telemetry.series["rss_bytes"]) >= 2
    assert 0 <= telemetry.sampler_cpu_pct < 100


def test_a_setting_that_cannot_be_applied_is_an_error_result_and_nothing_runs(
    config: WorkerConfig, redis_client: Any, tmp_path: Path
) -> None:
    # A platform_profile the kernel refuses to take (here: the attribute is a directory).
    (tmp_path / "sys" / "firmware" / "acpi" / "platform_profile").mkdir(parents=True)
    (tmp_path / "sys" / "firmware" / "acpi" / "platform_profile_choices").write_text("low-power\n")
    box = config.model_copy(
        update={"setters": {"platform_profile": SetterConfig()}, "facts_root": tmp_path}
    )
    payload = {**_payload(), "settings": {"platform_profile": "low-power"}, "job_id": ""}
    result = execute(payload, box, redis_client)
    assert result is not None and result.status is Status.ERROR
    assert "could not be applied, so it did not run: cannot write 'low-power'" in (
        result.error or ""
    )
    assert result.measurements == []
    # the failed write is recorded; with nothing read before it, nothing could be put back
    assert result.settings["platform_profile"].restored is False


def test_applied_settings_and_the_cool_down_are_recorded_with_the_result(
    config: WorkerConfig, redis_client: Any, tmp_path: Path
) -> None:
    acpi = tmp_path / "sys" / "firmware" / "acpi"
    acpi.mkdir(parents=True)
    (acpi / "platform_profile").write_text("balanced\n")
    (acpi / "platform_profile_choices").write_text("low-power balanced performance\n")
    box = config.model_copy(
        update={
            "setters": {"platform_profile": SetterConfig()},
            "facts_root": tmp_path,
            # a power no GPU reaches (and no power source under this root): the gate times out
            "cooldown": CooldownConfig(max_power_w=0.001, timeout_s=0.3, poll_s=0.1),
        }
    )
    payload = {**_payload(), "settings": {"platform_profile": "performance"}, "job_id": ""}
    result = execute(payload, box, redis_client)
    assert result is not None and result.status is Status.OK, result.error
    applied = result.settings["platform_profile"]
    assert (applied.previous, applied.read_back, applied.restored) == (
        "balanced", "performance", True
    )  # fmt: skip
    assert (acpi / "platform_profile").read_text().strip() == "balanced"
    assert result.cooldown is not None and not result.cooldown.settled
    assert result.cooldown.waited_s >= 0.3
