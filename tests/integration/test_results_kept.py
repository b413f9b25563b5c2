"""A broker without persistence killed -9 with results no store had read: the agent, which kept
them on its disk, publishes them again; the store records each exactly once, and no job runs
twice (worker/outbox.py, jobs/acks.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.protocol import FINAL_KEY, RESULTS_KEY
from orchestrator.embedded import free_port, server_binary
from orchestrator.store import Store
from tests.integration.conftest import orch, write_worker_config
from worker.outbox import outbox_folder

HOST = "volatile-box"
MATRIX = (
    "campaign: {name}\nrepetitions: 1\nworkload: {{prompt_tokens: 8, gen_tokens: 4}}\n"
    "hosts: [{host}]\nmatrix: {{model: ['tiny:q8_0', 'tiny:q4_k_m'], context: {contexts}}}\n"
)


class VolatileBroker:
    """A Valkey that keeps nothing on disk (no AOF, no snapshot), restartable on its port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(server_binary()), "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.folder), "--save", "", "--appendonly", "no",
             "--maxmemory-policy", "noeviction", "--logfile", str(self.folder / "server.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        _wait(lambda: _pings(client), 30, "the broker did not start")
        assert client.dbsize() == 0  # nothing survives a restart
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _wait(ready: Callable[[], Any], timeout_s: float, why: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(why() if callable(why) else why)
        time.sleep(0.2)


@pytest.fixture
def volatile(tmp_path: Path) -> Iterator[VolatileBroker]:
    server = VolatileBroker(tmp_path / "volatile")
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


@pytest.fixture
def broker(volatile: VolatileBroker) -> str:
    """The `start_worker` fixture's broker is the volatile one."""
    return volatile.url


def _submit(store: Path, matrix: Path, broker: str) -> dict[str, Any]:
    done = orch("--store", str(store), "submit", str(matrix), "--broker", broker, "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_results_survive_a_broker_that_restarts_empty(
    tmp_path: Path,
    volatile: VolatileBroker,
    start_worker: Any,
    llama_bin: Path,
    tiny_models: dict[str, Path],
) -> None:
    # The agent's outbox for this broker (start_worker gives it its own ORCH_HOME).
    spool = outbox_folder(tmp_path / "orch-home" / "spool" / HOST, volatile.url)
    config = write_worker_config(tmp_path / "w.yaml", HOST, llama_bin, tiny_models)
    worker = start_worker(config)
    store_path = tmp_path / "orch.db"
    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX.format(name="volatile", host=HOST, contexts="[64, 128]"))
    submitted = _submit(store_path, matrix, volatile.url)
    jobs = set(submitted["published"])
    assert len(jobs) == 4
    client = redis.Redis.from_url(volatile.url)

    # Every job finishes while no store reads: the results wait in the stream, and on the box.
    _wait(lambda: client.xlen(RESULTS_KEY) == len(jobs), 300, worker.log_text)
    _wait(lambda: len(list(spool.glob("*.*.json"))) == len(jobs), 30, worker.log_text)

    volatile.kill()
    volatile.start()  # empty: stream, final marks, queues and lease all gone

    _wait(lambda: client.xlen(RESULTS_KEY) >= len(jobs), 120, worker.log_text)
    assert "no longer in the broker's stream" in worker.log_text()
    for job_id in jobs:  # their final marks are back: a resubmitted job is not run again
        assert client.get(FINAL_KEY.format(job_id=job_id)) is not None

    status = orch("--store", str(store_path), "status", "--broker", volatile.url)
    assert status.returncode == 0, status.stderr
    store = Store.open(store_path)
    rows = store.conn.execute("SELECT job_id, status, attempt FROM results").fetchall()
    assert sorted(job_id for job_id, _s, _a in rows) == sorted(jobs)  # each exactly once
    errors = [
        json.loads(text)["error"] for (text,) in store.conn.execute("SELECT result FROM results")
    ]
    assert {(s, a) for _j, s, a in rows} == {("ok", 1)}, errors

    # Acknowledged by the store: the box forgets them.
    _wait(lambda: not list(spool.glob("*.json")), 60, worker.log_text)

    # Nothing ran twice, and the agent goes on with new work on the new broker.
    assert worker.log_text().count("running job") == len(jobs)
    again = _submit(store_path, matrix, volatile.url)
    assert again["published"] == []
    matrix.write_text(MATRIX.format(name="after", host=HOST, contexts="[64]"))
    after = _submit(store_path, matrix, volatile.url)
    assert len(after["published"]) == 2
    done = orch("--store", str(store_path), "submit", str(matrix), "--broker", volatile.url,
                "--wait", "--timeout", "300")  # fmt: skip
    assert done.returncode == 0, done.stderr + worker.log_text()[-3000:]
    assert worker.log_text().count("running job") == len(jobs) + 2
    assert worker.proc.poll() is None
