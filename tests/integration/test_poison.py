"""Poison in the queues: every malformed, unknown, oversized or misrouted message pushed into
a live agent's queue is dead-lettered with its reason, the agent keeps running and runs the
next real job; coordinator commands work with junk in a queue and show the count; an agent
whose consumer meets an unrecoverable error exits non-zero, so its supervisor restarts it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis
import yaml

from jobs.deadletter import DEAD_LETTER_KEY, DeadLetter
from orchestrator.store import Store
from orchestrator.submit import wait_for
from tests.integration.conftest import orch, write_worker_config
from tests.poison import real_poison

MATRIX = (
    "campaign: {name}\nrepetitions: 1\nworkload: {{prompt_tokens: 16, gen_tokens: 8}}\n"
    "hosts: [{host}]\nmatrix: {{model: ['tiny:q8_0'], context: [64]}}\n"
)


def _bare_config(tmp_path: Path, host: str) -> Path:
    """A worker config whose engine is /bin/true: for tests where no job runs."""
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    config = tmp_path / f"{host}.yaml"
    config.write_text(yaml.safe_dump({
        "host": host, "declared": {}, "threads": 1, "models": {"tiny:q8_0": str(model)},
        "engines": {"llama-bench": {"backends": {"cpu": "/bin/true"}}},
    }))  # fmt: skip
    return config


def _dead_letters(client: Any) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(r) for r in client.lrange(DEAD_LETTER_KEY, 0, -1)]


def test_every_poison_kind_is_dead_lettered_and_the_agent_runs_the_next_job(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    client = redis.Redis.from_url(broker)
    poison = real_poison(broker, client, "box")  # before the agent consumes the templates
    worker = start_worker(write_worker_config(tmp_path / "w.yaml", "box", llama_bin, tiny_models))
    for raw, _reason in poison.values():
        client.lpush("orch.box.default", raw)

    deadline = time.monotonic() + 120
    while client.llen(DEAD_LETTER_KEY) < len(poison) and time.monotonic() < deadline:
        assert worker.proc.poll() is None, worker.log_text()[-3000:]
        time.sleep(0.1)
    letters = _dead_letters(client)
    assert len(letters) == len(poison), worker.log_text()[-3000:]
    # lpush then BRPOP: first in, first popped; the list holds the newest first
    for (name, (raw, reason)), letter in zip(poison.items(), reversed(letters), strict=True):
        assert reason in letter.reason, (name, letter.reason)
        assert (letter.queue, letter.source, letter.size_bytes) == (
            "orch.box.default",
            "worker box",
            len(raw),
        ), name
    assert client.llen("orch.box.default") == 0 and client.hlen("unacked") == 0
    # Celery's remote control is off: the consuming agent listens on no broadcast channel, so
    # neither a junk broadcast nor a real `shutdown` command reaches it.
    listened = [c for c in client.pubsub_channels() if b"pidbox" in c or b"celeryev" in c]
    assert not listened and client.pubsub_numpat() == 0, listened
    assert client.publish("/0.celery.pidbox", b"[1, 2, 3]") == 0

    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX.format(name="after-poison", host="box"))
    store_path = tmp_path / "orch.db"
    sent = orch("--store", str(store_path), "submit", str(matrix), "--broker", broker)
    assert sent.returncode == 0, sent.stderr
    state = wait_for(Store.open(store_path), client, "after-poison", timeout_s=180, poll_s=0.5)
    assert state.done, worker.log_text()[-3000:]
    [row] = Store.open(store_path).campaign_jobs("after-poison")
    assert row.result is not None and row.result.status.value == "ok", row.result
    assert worker.proc.poll() is None  # still running after all of it
    assert "Unrecoverable error" not in worker.log_text()


def test_coordinator_commands_work_with_junk_in_the_queues(
    tmp_path: Path, broker: str, start_worker: Any
) -> None:
    start_worker(_bare_config(tmp_path, "box")).stop()  # known host, nobody consuming
    client = redis.Redis.from_url(broker)
    matrix, store = tmp_path / "m.yaml", str(tmp_path / "orch.db")
    matrix.write_text(MATRIX.format(name="junk", host="box"))
    sent = orch("--store", store, "submit", str(matrix), "--broker", broker)
    assert sent.returncode == 0, sent.stderr
    client.rpush("orch.box.default", b"not json", b"\x00\xff garbage")
    client.hset("unacked", "forged-tag", b"{not json either")
    client.zadd("unacked_index", {"forged-tag": 1.0})

    status = orch("--store", store, "status", "--broker", broker)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    assert "dead letters: 3 refused message(s)" in status.stdout, status.stdout
    [row] = [line.split() for line in status.stdout.splitlines() if line.startswith("box ")]
    assert row[-4:-2] == ["0", "1"], status.stdout  # running 0, waiting 1: the real job only
    assert client.llen("orch.box.default") == 1 and client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0

    client.rpush("orch.box.default", b"[]")  # junk arriving later: cancel meets it too
    cancelled = orch("--store", store, "cancel", "junk", "--broker", broker)
    assert cancelled.returncode == 0 and "Traceback" not in cancelled.stderr, cancelled.stderr
    assert "junk: 1 job(s) taken out of their queues" in cancelled.stdout
    assert client.llen("orch.box.default") == 0

    listed = orch("dlq", "list", "--broker", broker, "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert [e["source"] for e in entries] == ["coordinator"] * 4
    assert sorted(e["queue"] for e in entries) == ["orch.box.default"] * 3 + ["unacked"]
    assert all(e["reason"] for e in entries)
    assert "not JSON" in orch("dlq", "list", "--broker", broker).stdout
    purged = orch("dlq", "purge", "--broker", broker)
    assert purged.returncode == 0 and "4 dead letter(s) dropped" in purged.stdout
    assert client.llen(DEAD_LETTER_KEY) == 0
    assert "dead letters" not in orch("--store", store, "status", "--broker", broker).stdout


def test_an_unrecoverable_consumer_error_exits_non_zero(
    tmp_path: Path, broker: str, start_worker: Any
) -> None:
    worker = start_worker(_bare_config(tmp_path, "box"))
    client = redis.Redis.from_url(broker)
    # The queue's key turned into a string (an operator's mistake, another app): every BRPOP
    # on it fails with WRONGTYPE, which kombu cannot recover from.
    client.delete("orch.box.default")
    client.set("orch.box.default", "not a list")
    code = worker.proc.wait(timeout=120)
    assert code != 0, worker.log_text()[-3000:]
    assert "Unrecoverable error" in worker.log_text()
    assert "exiting non-zero so that a supervisor starts the agent again" in worker.log_text()
