"""A worker killed mid-job: the job runs again when it comes back, and is recorded once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from jobs.protocol import ATTEMPTS_KEY
from orchestrator.store import Store
from orchestrator.submit import wait_for
from tests.integration.conftest import orch, write_worker_config


def _engine_pids(model_path: Path) -> list[int]:
    """llama-bench processes running on `model_path` (read from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"llama-bench") and str(model_path).encode() in argv:
            pids.append(int(entry.name))
    return pids


def test_sigkill_mid_job_reruns_it_and_stores_one_result(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    # Its own copy of the model, so we can tell this job's llama-bench from any other.
    model = tmp_path / "slow.gguf"
    model.write_bytes(tiny_models["tiny:q8_0"].read_bytes())
    config = write_worker_config(
        tmp_path / "w.yaml", "laptop-80w", llama_bin, {"tiny:q8_0": model}, vram_split="512M"
    )
    first = start_worker(config)
    matrix = tmp_path / "m.yaml"
    # Deep context and many repetitions: long enough (seconds) to be killed mid-run.
    matrix.write_text(
        "campaign: fault\nrepetitions: 6\nworkload: {prompt_tokens: 64, gen_tokens: 16}\n"
        "hosts: [laptop-80w]\n"
        "matrix: {model: ['tiny:q8_0'], context: [8000], vram_split: [512M]}\n"
    )
    store_path = tmp_path / "orch.db"
    sent = orch("--store", str(store_path), "submit", str(matrix), "--broker", broker, "--json")
    assert sent.returncode == 0, sent.stderr
    store = Store.open(store_path)
    [row] = store.campaign_jobs("fault")
    client = redis.Redis.from_url(broker)

    deadline = time.monotonic() + 60
    while not _engine_pids(model):
        assert time.monotonic() < deadline, first.log_text()
        time.sleep(0.05)
    first.kill()

    # The engine child dies with its worker (no orphan benchmark left running on the box).
    deadline = time.monotonic() + 10
    while _engine_pids(model):
        assert time.monotonic() < deadline, "llama-bench outlived its SIGKILLed worker"
        time.sleep(0.05)
    assert client.xlen("orch:results") == 0
    assert client.hlen("unacked") == 1  # delivered, never acknowledged

    second = start_worker(config, timeout_s=90)  # waits out the dead worker's lease
    state = wait_for(store, client, "fault", timeout_s=180, poll_s=0.5)
    assert state.done, second.log_text()

    [row] = store.campaign_jobs("fault")
    assert row.result is not None
    assert row.result.status.value == "ok", row.result.error
    assert row.result.attempt == 2
    assert int(client.get(ATTEMPTS_KEY.format(job_id=row.spec.job_id)) or 0) == 2
    assert "re-queued 1 job(s)" in second.log_text()
    count = store.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    assert count == 1
    assert client.hlen("unacked") == 0
    assert client.llen("orch.laptop-80w.vram-512M") == 0


def test_second_live_worker_on_the_same_queue_is_refused(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    config = write_worker_config(tmp_path / "w.yaml", "box", llama_bin, tiny_models)
    start_worker(config)
    done = orch("worker", "--config", str(config), "--broker", broker, "--lease-wait", "2")
    assert done.returncode != 0
    assert "another live worker runs host box" in done.stderr
