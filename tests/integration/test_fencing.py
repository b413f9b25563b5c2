"""Results that only move forward, with real agents, Valkey and llama.cpp: two stores reading
one broker agree after a retry, and a refusal by the wrong host never becomes a job's result.

(An agent frozen (SIGSTOP) past its lease while a benchmark runs, with a successor for the same
box, is tests/faults/test_fault_agents.py's `test_agent_sigstop_beyond_the_lease` now: no two
benchmarks overlap, each job has one final result, the frozen agent's late result is refused.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from jobs.protocol import RESULTS_KEY
from jobs.result import Status
from orchestrator.store import Store
from orchestrator.submit import wait_for
from tests.integration.conftest import orch, write_worker_config


def test_stores_reading_one_broker_converge_after_a_retry_and_ignore_wrong_host_refusals(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    model = tmp_path / "late.gguf"
    model.write_bytes(b"not a model yet")  # the first run fails to load it
    config = write_worker_config(tmp_path / "w.yaml", "box", llama_bin, {"tiny:q8_0": model})
    start_worker(config)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "campaign: again\nrepetitions: 1\nworkload: {prompt_tokens: 16, gen_tokens: 8}\n"
        "hosts: [box]\nmatrix: {model: ['tiny:q8_0'], context: [64]}\n"
    )
    submitter, other = tmp_path / "a.db", tmp_path / "b.db"
    done = orch("--store", str(submitter), "submit", str(matrix), "--broker", broker,
                "--wait", "--timeout", "120")  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    client = redis.Redis.from_url(broker)
    reader = Store.open(other)  # a second coordinator reading the same broker
    reader.collect(client)
    [row] = reader.campaign_jobs("again")
    failure = row.result
    assert failure is not None and failure.status is not Status.OK and failure.attempt == 1

    # What an older worker made of a copy of the message in another host's queue: a refusal
    # with a higher attempt. It is no result of the job's, in any store.
    refusal = failure.model_copy(
        update={"host": "other", "queue": "orch.other.default", "attempt": 5,
                "status": Status.ERROR, "error": f"job for {row.spec.queue} reached "
                "orch.other.default (host other)"}
    )  # fmt: skip
    client.xadd(RESULTS_KEY, {"result": refusal.model_dump_json()})
    reader.collect(client)
    assert reader.campaign_jobs("again")[0].result == failure

    model.write_bytes(tiny_models["tiny:q8_0"].read_bytes())
    retried = orch("--store", str(submitter), "retry", "again", "--failed", "--broker", broker)
    assert retried.returncode == 0, retried.stderr
    first = Store.open(submitter)
    assert wait_for(first, client, "again", timeout_s=120, poll_s=0.5).done
    [mine] = first.campaign_jobs("again")
    assert mine.result is not None and mine.result.status is Status.OK, mine.result
    assert mine.result.attempt == 2  # counted on from the failure's, not from 1 again

    reader.collect(client)
    [theirs] = reader.campaign_jobs("again")
    assert theirs.result == mine.result  # converged: the retry superseded the old failure
