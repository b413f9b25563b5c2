"""`wait_for`: rides out a broker that goes away and comes back, and stops on what only a
human can unblock (after a grace, not on one look). Real Valkey; results pushed as a worker
would."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import redis

from jobs.inventory import WorkerInventory
from jobs.protocol import INVENTORY_KEY, RESULTS_KEY
from jobs.result import RunResult, Status
from jobs.spec import JobSpec, queue_name
from orchestrator.embedded import EmbeddedBroker
from orchestrator.store import Store
from orchestrator.submit import wait_for


def _job(configuration: dict[str, str]) -> JobSpec:
    return JobSpec(campaign="c", host="halo", engine="llama-bench", model="m", backend="cpu",
                   context=64, configuration=configuration)  # fmt: skip


def _result(job: JobSpec) -> str:
    now = datetime.now(UTC)
    return RunResult(
        job_id=job.job_id, campaign=job.campaign, host=job.host, queue=job.queue, attempt=1,
        status=Status.OK, started_at=now, finished_at=now, worker_version="t", job=job,
    ).model_dump_json()  # fmt: skip


def _store(tmp_path: Path, *jobs: JobSpec) -> Store:
    store = Store.open(tmp_path / "orch.db")
    store.record_campaign("c", "m.yaml", "")
    for job in jobs:
        store.record_job(job)
    return store


def test_the_wait_goes_on_through_a_broker_restart(tmp_path: Path) -> None:
    job = _job({})
    store = _store(tmp_path, job)
    broker = EmbeddedBroker(tmp_path / "broker")
    broker.start()
    client = redis.Redis.from_url(broker.url, socket_connect_timeout=1)
    said: list[str] = []
    outage = threading.Event()

    def on_outage(message: str) -> None:
        said.append(message)
        outage.set()

    def restart() -> None:
        broker.stop()
        outage.wait(120)  # the waiter has seen the broker gone
        broker.start()
        redis.Redis.from_url(broker.url).xadd(RESULTS_KEY, {"result": _result(job)})

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        state = wait_for(store, client, "c", timeout_s=300, poll_s=0.05,
                         wait_for_reconfiguration=True, on_outage=on_outage)  # fmt: skip
    finally:
        thread.join()
        broker.stop()
    assert state.done
    assert said[0].startswith("the broker is not answering") and said[-1] == "the broker is back"


def test_jobs_for_another_carve_out_end_the_wait_with_the_instruction(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    here, there = {"vram_split": "512M"}, {"vram_split": "32G"}
    job = _job(there)
    store = _store(tmp_path, job)
    seconds, _micros = redis_client.time()  # online for the whole wait (no heartbeat here)
    inventory = WorkerInventory(host="halo", queue=queue_name("halo", here), configuration=here,
                                version="t", instance_id="i", pid=1, started_at=0,
                                last_seen=float(seconds) + 3600)  # fmt: skip
    redis_client.set(INVENTORY_KEY.format(host="halo"), inventory.model_dump_json())
    looks: list[int] = []
    state = wait_for(store, redis_client, "c", timeout_s=300, poll_s=0.2,
                     on_progress=lambda p: looks.append(len(p.blocked)))  # fmt: skip
    assert not state.done and state.blocked == (
        "halo: 1 job(s) wait for vram_split=32G (now vram_split=512M) — reboot into "
        "vram_split=32G and start its worker again",
    )
    assert len(looks) > 1  # not ended on the first look: a restarting worker gets its grace
