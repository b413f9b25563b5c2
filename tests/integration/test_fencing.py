"""Fencing and results that only move forward, with real agents, Valkey and llama.cpp.

An agent frozen (SIGSTOP) past its lease while a benchmark runs, and a second agent started for
the same box: no two benchmarks overlap on the box, each job has one final result, and the
frozen agent's late result is refused. Two stores reading one broker agree after a retry, and a
refusal by the wrong host never becomes a job's result.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.protocol import LEASE_KEY, RESULTS_KEY
from jobs.result import RunResult, Status
from orchestrator.store import Store
from orchestrator.submit import wait_for
from tests.integration.conftest import orch, write_worker_config


def _marking_llama_bin(tmp_path: Path, llama_bin: Path, markers: Path, hold: Path) -> Path:
    """A bin/ folder whose llama-bench writes when each benchmark run (`-m`) starts and ends,
    as seen on the box, and runs the real one once the file `hold` is gone (so a run lasts
    until the test lets it end); llama-server is the real one."""
    folder = tmp_path / "bin"
    folder.mkdir()
    wrapper = folder / "llama-bench"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" -m "*) echo "start $$ $(date +%s.%N)" >> "{markers}";; esac\n'
        f'while [ -e "{hold}" ]; do sleep 0.1; done\n'
        f'"{llama_bin / "llama-bench"}" "$@"\nrc=$?\n'
        f'case " $* " in *" -m "*) echo "end $$ $(date +%s.%N)" >> "{markers}";; esac\n'
        "exit $rc\n"
    )
    wrapper.chmod(0o755)
    (folder / "llama-server").symlink_to(llama_bin / "llama-server")
    return folder


def _runs(markers: Path) -> list[tuple[float, float]]:
    """(start, end) of every benchmark run; a run with no end counts as still running."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for line in markers.read_text().splitlines() if markers.exists() else []:
        kind, pid, at = line.split()
        (starts if kind == "start" else ends)[pid] = float(at)
    return sorted((at, ends.get(pid, float("inf"))) for pid, at in starts.items())


def _wait_until(what: str, done: Any, timeout_s: float = 60, log: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"{what}\n{log() if log else ''}"
        time.sleep(0.1)


def _stream(client: Any) -> list[RunResult]:
    return [RunResult.model_validate_json(f[b"result"]) for _i, f in client.xrange(RESULTS_KEY)]


def test_a_frozen_agent_and_its_successor_never_overlap_on_one_box(
    tmp_path: Path,
    broker: str,
    start_worker: Any,
    llama_bin: Path,
    tiny_models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORCH_LEASE_TTL_S", "3")  # inherited by the agents
    markers, hold = tmp_path / "runs.log", tmp_path / "hold"
    hold.touch()  # every benchmark run lasts until the test removes it
    folder = _marking_llama_bin(tmp_path, llama_bin, markers, hold)
    config = write_worker_config(tmp_path / "w.yaml", "box", folder, tiny_models)
    first = start_worker(config)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "campaign: fence\nrepetitions: 1\nworkload: {prompt_tokens: 16, gen_tokens: 8}\n"
        "hosts: [box]\nmatrix: {model: ['tiny:q8_0'], context: [64, 128, 256]}\n"
    )
    store_path = tmp_path / "orch.db"
    sent = orch("--store", str(store_path), "submit", str(matrix), "--broker", broker, "--json")
    assert sent.returncode == 0, sent.stderr
    client = redis.Redis.from_url(broker)

    _wait_until("no benchmark started", lambda: _runs(markers), log=first.log_text)
    os.kill(first.proc.pid, signal.SIGSTOP)  # mid-job; its benchmark runs on
    try:
        lease = LEASE_KEY.format(host="box")
        _wait_until("the frozen agent's lease did not expire", lambda: not client.exists(lease))
        second = start_worker(config, wait=False)
        _wait_until(
            "the new agent did not wait for the frozen one",
            lambda: f"waiting for pid {first.proc.pid}" in second.log_text(),
            log=second.log_text,
        )
        assert len(_runs(markers)) == 1  # nothing started beside the frozen agent's run
    finally:
        hold.unlink()
        os.kill(first.proc.pid, signal.SIGCONT)
    _wait_until("the frozen agent did not stop", lambda: first.proc.poll() is not None,
                log=first.log_text)  # fmt: skip

    store = Store.open(store_path)
    state = wait_for(store, client, "fence", timeout_s=300, poll_s=0.5)
    assert state.done, second.log_text()

    runs = _runs(markers)
    # the frozen agent's run, then each job once by its successor, one after another
    assert len(runs) == 4, runs
    for (_start, end), (next_start, _end) in zip(runs, runs[1:], strict=False):
        assert end <= next_start, f"two benchmarks overlapped on one box: {runs}"

    rows = store.campaign_jobs("fence")
    results = [row.result for row in rows]
    assert all(r is not None and r.status is Status.OK for r in results), results
    assert store.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 3
    # the job the frozen agent had started ran again, under the new lease
    assert sorted(r.attempt for r in results if r) == [1, 1, 2]
    assert {r.lease_generation for r in results if r} == {2}
    # the frozen agent's late result was refused: nothing of generation 1 reached the stream
    assert {r.lease_generation for r in _stream(client)} == {2}
    assert "lease is not ours" in first.log_text()
    assert client.hlen("unacked") == 0 and client.llen("orch.box.default") == 0


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
