"""What a real fleet does to the spine: lost queues, reboots into another configuration,
two agents for one box, a broker that is not there."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis

from jobs.protocol import LEASE_KEY
from orchestrator.store import Store
from tests.integration.conftest import orch, write_worker_config

MATRIX = (
    "campaign: {name}\nrepetitions: 2\nworkload: {{prompt_tokens: 16, gen_tokens: 8}}\n"
    "hosts: [laptop-80w]\nmatrix: {{model: ['tiny:q8_0'], context: [64]{extra}}}\n"
)


def _submit(store: Path, matrix: Path, broker: str) -> dict[str, Any]:
    done = orch("--store", str(store), "submit", str(matrix), "--broker", broker, "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_resubmitting_requeues_jobs_the_broker_lost_and_nothing_else(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    config = write_worker_config(tmp_path / "w.yaml", "laptop-80w", llama_bin, tiny_models)
    worker = start_worker(config)
    worker.stop()  # the box goes away; its inventory stays known
    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX.format(name="resume", extra=""))
    store = tmp_path / "orch.db"
    client = redis.Redis.from_url(broker)

    first = _submit(store, matrix, broker)
    assert len(first["published"]) == 1
    assert first["notes"][0].startswith("laptop-80w: offline (last seen")

    client.delete("orch.laptop-80w.default")  # the broker loses its queue (no AOF, say)
    second = _submit(store, matrix, broker)
    assert second["requeued"] == first["published"]

    third = _submit(store, matrix, broker)  # still queued: not published twice
    assert third["published"] == [] and third["waiting"] == first["published"]
    assert client.llen("orch.laptop-80w.default") == 1

    start_worker(config)
    done = orch("--store", str(store), "submit", str(matrix), "--broker", broker,
                "--wait", "--timeout", "120")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1/1 jobs finished" in done.stdout


def test_jobs_follow_the_configuration_their_host_is_in(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    config = write_worker_config(
        tmp_path / "w.yaml", "laptop-80w", llama_bin, tiny_models, vram_split="32G"
    )
    start_worker(config)
    store = tmp_path / "orch.db"

    # no vram_split in the matrix: "wherever the box is now"
    anywhere = tmp_path / "any.yaml"
    anywhere.write_text(MATRIX.format(name="anywhere", extra=""))
    out = _submit(store, anywhere, broker)
    assert out["queues"] == ["orch.laptop-80w.vram-32G"] and out["notes"] == []

    # a carve-out the box is not in now waits, and the user is told why
    elsewhere = tmp_path / "512.yaml"
    elsewhere.write_text(MATRIX.format(name="small-carveout", extra=", vram_split: [512M]"))
    out = _submit(store, elsewhere, broker)
    assert out["queues"] == ["orch.laptop-80w.vram-512M"]
    instruction = (
        "laptop-80w: 1 job(s) wait for vram_split=512M (now vram_split=32G) — reboot into "
        "vram_split=512M and start its worker again"
    )
    assert out["notes"] == [instruction]
    status = orch("--store", str(store), "status", "small-carveout", "--broker", broker)
    assert status.returncode == 0, status.stderr
    assert instruction in status.stdout
    assert "hosts: unknown" not in status.stdout
    rows = Store.open(store).campaign_jobs("small-carveout")
    assert rows[0].spec.configuration == {"vram_split": "512M"}


def test_an_agent_that_lost_its_box_to_another_stops(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    config = write_worker_config(tmp_path / "w.yaml", "laptop-80w", llama_bin, tiny_models)
    first = start_worker(config)
    client = redis.Redis.from_url(broker)
    client.delete(LEASE_KEY.format(host="laptop-80w"))  # e.g. a broker restart without data
    second = start_worker(config)  # takes the free lease

    deadline = time.monotonic() + 30
    while first.proc.poll() is None:
        assert time.monotonic() < deadline, first.log_text()
        time.sleep(0.2)
    assert "another agent took over host laptop-80w" in first.log_text()
    assert second.proc.poll() is None  # the new agent carries on


def test_worker_with_an_unreachable_broker_says_so(tmp_path: Path, llama_bin: Path) -> None:
    config = write_worker_config(tmp_path / "w.yaml", "box", llama_bin, {})
    done = orch("worker", "--config", str(config), "--broker", "redis://:pw@127.0.0.1:1/0")
    assert done.returncode == 2
    assert "cannot use the broker at redis://:***@127.0.0.1:1/0" in done.stderr
    assert "Traceback" not in done.stderr and "pw@" not in done.stderr
