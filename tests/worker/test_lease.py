"""worker.lease against a real Valkey: generations, the start gate, fenced publishing, and
how a new holder tells a live predecessor on this box from a dead one."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from jobs.process import process_token
from jobs.protocol import (
    ATTEMPTS_KEY,
    FINAL_KEY,
    LEASE_GENERATION_KEY,
    LEASE_HOLDERS_KEY,
    LEASE_KEY,
    RESULTS_KEY,
)
from jobs.result import RunResult, Status
from jobs.spec import JobSpec, Workload
from worker import runner
from worker.config import WorkerConfig
from worker.errors import ConfigError
from worker.lease import Lease, LeaseLost, lease_ttl_s, start_attempt

pytestmark = pytest.mark.integration


def _job() -> JobSpec:
    return JobSpec(
        campaign="c", host="box", engine="llama-bench", model="tiny:q8_0", backend="cpu",
        context=64, workload=Workload(prompt_tokens=16, gen_tokens=8), repetitions=2,
    )  # fmt: skip


def _result(attempt: int, status: Status = Status.OK) -> RunResult:
    job, now = _job(), datetime.now(UTC)
    return RunResult(
        job_id=job.job_id, campaign=job.campaign, host=job.host, queue=job.queue,
        attempt=attempt, status=status, started_at=now, finished_at=now, worker_version="t",
        job=job,
    )  # fmt: skip


def _pushed(redis_client: Any) -> list[RunResult]:
    entries = redis_client.xrange(RESULTS_KEY)
    return [RunResult.model_validate_json(fields[b"result"]) for _id, fields in entries]


def test_every_acquisition_is_a_new_generation_and_a_held_lease_is_refused(
    redis_client: Any,
) -> None:
    first, second = Lease("box", ttl_s=30), Lease("box", ttl_s=30)
    assert first.acquire(redis_client) is None and first.generation == 1
    holder = second.acquire(redis_client)
    assert holder is not None and json.loads(holder)["generation"] == 1
    assert second.generation == 0
    first.release(redis_client)
    assert second.acquire(redis_client) is None and second.generation == 2
    assert json.loads(redis_client.get(LEASE_KEY.format(host="box")))["pid"] > 0
    # the lease of another host is its own: its generations count apart
    other = Lease("other", ttl_s=30)
    assert other.acquire(redis_client) is None and other.generation == 1


def test_a_lapsed_lease_is_taken_back_only_if_nobody_took_it_since(redis_client: Any) -> None:
    mine = Lease("box", ttl_s=30)
    mine.acquire(redis_client)
    redis_client.delete(LEASE_KEY.format(host="box"))  # it lapsed (the agent was frozen)
    assert mine.keep(redis_client)  # nobody took it: same generation, same value
    assert redis_client.get(LEASE_KEY.format(host="box")).decode() == mine.value

    redis_client.delete(LEASE_KEY.format(host="box"))
    newer = Lease("box", ttl_s=30)
    assert newer.acquire(redis_client) is None and newer.generation == 2
    redis_client.delete(LEASE_KEY.format(host="box"))  # and lapsed again
    assert not mine.keep(redis_client)  # generation 2 was taken after ours: we lost the box
    assert newer.keep(redis_client)


def test_an_agent_that_lost_its_lease_cannot_start_or_publish(
    redis_client: Any, tmp_path: Path
) -> None:
    stale, fresh = Lease("box", ttl_s=30), Lease("box", ttl_s=30)
    stale.acquire(redis_client)
    job_id = _job().job_id
    assert start_attempt(redis_client, job_id, "box", stale) == (1, 1)

    redis_client.delete(LEASE_KEY.format(host="box"))  # stale froze past its lease ...
    fresh.acquire(redis_client)  # ... and a new agent took the box
    with pytest.raises(LeaseLost):
        start_attempt(redis_client, job_id, "box", stale)
    assert int(redis_client.get(ATTEMPTS_KEY.format(job_id=job_id))) == 1  # not counted

    with pytest.raises(LeaseLost):  # its late result: neither published nor spooled
        runner.push(redis_client, _result(1), tmp_path / "spool", stale)
    assert _pushed(redis_client) == [] and not (tmp_path / "spool").exists()

    assert start_attempt(redis_client, job_id, "box", fresh) == (2, 2)
    published = runner.push(redis_client, _result(2, Status.ERROR), None, fresh)
    assert published.lease_generation == 2
    assert _pushed(redis_client) == [published]


def test_a_late_result_never_replaces_a_later_final_one(redis_client: Any, tmp_path: Path) -> None:
    lease = Lease("box", ttl_s=30)
    lease.acquire(redis_client)
    final = runner.push(redis_client, _result(2, Status.ERROR), None, lease)
    # attempt 1's result, spooled while the broker was away, is flushed after attempt 2's
    spool = tmp_path / "spool"
    spool.mkdir()
    late = _result(1).model_copy(update={"lease_generation": 1})
    (spool / f"{late.job_id}.json").write_text(late.model_dump_json())
    assert runner.flush_spool(redis_client, spool) == 0
    assert list(spool.iterdir()) == []
    assert _pushed(redis_client) == [final]
    stored = redis_client.get(FINAL_KEY.format(job_id=final.job_id))
    assert RunResult.model_validate_json(stored) == final


def test_a_predecessor_is_waited_for_while_its_process_lives_on_this_box(
    redis_client: Any,
) -> None:
    frozen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holders = LEASE_HOLDERS_KEY.format(host="box")
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()

        def record(generation: int, pid: int, process: str, boot_id: str = boot) -> None:
            value = {"generation": generation, "instance": "x", "pid": pid, "boot": boot_id,
                     "process": process, "machine": "m"}  # fmt: skip
            redis_client.hset(holders, generation, json.dumps(value))

        redis_client.set(LEASE_GENERATION_KEY.format(host="box"), 3)
        record(1, frozen.pid, process_token(frozen.pid))
        record(2, frozen.pid, "another-boot:1", boot_id="another-boot")  # before a reboot
        record(3, frozen.pid, process_token(frozen.pid) + "0")  # its pid, reused
        lease = Lease("box", ttl_s=30)
        lease.acquire(redis_client)
        assert lease.generation == 4

        [alive] = lease.live_predecessors(redis_client)
        assert (alive.pid, alive.generation) == (frozen.pid, 1)
        # only the live one is remembered, besides the new holder's own entry
        assert sorted(redis_client.hkeys(holders)) == [b"1", b"4"]

        frozen.kill()
        frozen.wait()
        assert lease.live_predecessors(redis_client) == []
        lease.release(redis_client)  # a clean exit is no one's predecessor
        assert redis_client.hkeys(holders) == []
    finally:
        frozen.kill()
        frozen.wait()


def test_execute_with_a_lost_lease_does_not_start_the_job(
    redis_client: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    engines = {"llama-bench": {"backends": {"cpu": llama_bin / "llama-bench"}}}
    config = WorkerConfig.model_validate(
        {"host": "box", "engines": engines, "models": tiny_models, "threads": 1}
    )
    lost = Lease("box", ttl_s=30)  # never acquired: it holds nothing
    job = _job()
    with pytest.raises(LeaseLost):
        runner.execute(job.model_dump(mode="json"), config, redis_client, None, None, lost)
    assert _pushed(redis_client) == []
    assert redis_client.get(ATTEMPTS_KEY.format(job_id=job.job_id)) is None


def test_the_lease_ttl_can_be_shortened_for_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_LEASE_TTL_S", "3")
    assert lease_ttl_s() == 3 and Lease("box").heartbeat_s == 1.0
    monkeypatch.setenv("ORCH_LEASE_TTL_S", "1")
    with pytest.raises(ConfigError, match="at least 2 s"):
        lease_ttl_s()
