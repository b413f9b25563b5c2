"""The live-progress contract (jobs/progress.py): bounds, TTL, and what a hostile writer gets."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
import redis

from jobs.inventory import WorkerInventory
from jobs.progress import (
    PROGRESS_MAX_BYTES,
    PROGRESS_TTL_S,
    Phase,
    Progress,
    parse_progress,
    progress_key,
    read_progress,
)
from jobs.protocol import INVENTORY_KEY, ONLINE_WITHIN_S
from jobs.spec import queue_name
from orchestrator.status import render_status
from orchestrator.store import Store
from worker.progress import ProgressReporter


def _record(**fields: object) -> Progress:
    base: dict[str, object] = {"host": "halo", "phase": Phase.REPETITION,
                               "phase_started_at": 100.0, "updated_at": 100.0}  # fmt: skip
    return Progress.model_validate({**base, **fields})


def test_a_record_reads_back_and_says_k_of_n_with_its_elapsed_time() -> None:
    record = _record(job_id="abcdef0123456789", campaign="c1", repetition=3, repetitions=10,
                     tokens_per_s=45.06)  # fmt: skip
    back = parse_progress(record.model_dump_json().encode(), "halo")
    assert back == record
    assert back.text(now=112.4) == (
        "job abcdef012345 (c1): repetition 3 of 10, 12 s, 45.1 tokens/s (last repetition)"
    )
    running = _record(phase=Phase.RUNNING, repetitions=5, job_id="j", campaign="c")
    assert running.text(now=100.0) == "job j (c): running 5 repetitions, 0 s"
    assert _record(phase=Phase.IDLE).text(now=0) == "idle"
    assert len(record.model_dump_json()) < PROGRESS_MAX_BYTES // 4  # the bound has room


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"host": "halo"}',
        json.dumps(
            {"host": "halo", "phase": "exploding", "phase_started_at": 1, "updated_at": 1}
        ).encode(),  # fmt: skip
        json.dumps(
            {"host": "halo", "phase": "repetition", "phase_started_at": "x", "updated_at": 1}
        ).encode(),  # fmt: skip
        json.dumps(
            {
                "host": "halo",
                "phase": "repetition",
                "phase_started_at": 1,
                "updated_at": 1,
                "repetition": -4,
            }
        ).encode(),  # fmt: skip
        b'{"a":' * 10_000,  # nesting bomb, over the size bound too
        b"[" * 2000,  # nesting under the bound
        json.dumps(
            {
                "host": "halo",
                "phase": "idle",
                "phase_started_at": 1,
                "updated_at": 1,
                "campaign": "x" * 5000,
            }
        ).encode(),  # fmt: skip
        _record(host="other").model_dump_json().encode(),  # another host's record
        "\udcff",
    ],
)
def test_malformed_progress_reads_as_none(raw: bytes | str) -> None:
    assert parse_progress(raw, "halo") is None


def test_a_huge_value_is_refused_without_reading_it_whole(redis_client: redis.Redis) -> None:
    redis_client.set(progress_key("halo"), b"{" + b" " * (8 * 1024 * 1024) + b"}")
    assert read_progress(redis_client, "halo") is None


def test_the_reporter_writes_with_a_ttl_and_holds_back_fast_repetitions(
    redis_client: redis.Redis,
) -> None:
    clock = iter(float(t) for t in range(1000, 2000))
    reporter = ProgressReporter(redis_client, "halo", clock=lambda: next(clock))
    reporter.start_job("j1", "c1")
    assert reporter.flush()  # written by the reporter's own thread: the job never waits
    assert read_progress(redis_client, "halo").phase is Phase.SETTINGS
    assert 0 < redis_client.ttl(progress_key("halo")) <= PROGRESS_TTL_S
    assert PROGRESS_TTL_S >= ONLINE_WITHIN_S  # a live agent's beats keep it
    reporter.phase(Phase.REPETITION, 1, 50)  # a phase change: written at once
    assert reporter.flush()
    for k in range(2, 51):  # faster than once a second: held back
        reporter.phase(Phase.REPETITION, k, 50, tokens_per_s=float(k))
    assert reporter.flush()
    stored = read_progress(redis_client, "halo")
    assert stored is not None and stored.repetition == 1 and stored.job_id == "j1"
    assert reporter.record.repetition == 50 and reporter.record.tokens_per_s == 50.0
    reporter.refresh()  # the heartbeat writes the latest
    assert reporter.flush()
    stored = read_progress(redis_client, "halo")
    assert stored is not None and stored.repetition == 50 and stored.campaign == "c1"
    reporter.phase(Phase.RESTORING)
    reporter.idle()
    assert reporter.flush()
    stored = read_progress(redis_client, "halo")
    assert stored is not None and stored.phase is Phase.IDLE and stored.job_id is None


def test_hostile_progress_never_breaks_orch_status(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    here = {"vram_split": "512M"}
    seconds, _ = redis_client.time()
    for host in ("halo", "nuc"):
        inventory = WorkerInventory(host=host, queue=queue_name(host, here), configuration=here,
                                    version="t", instance_id="i", pid=1, started_at=0,
                                    last_seen=float(seconds) + 3600)  # fmt: skip
        redis_client.set(INVENTORY_KEY.format(host=host), inventory.model_dump_json())
    redis_client.set(progress_key("halo"), b"\xff\xfe" * 100_000)
    busy = _record(host="nuc", job_id="j9", campaign="c", repetition=2, repetitions=4,
                   phase_started_at=float(seconds))  # fmt: skip
    redis_client.set(progress_key("nuc"), busy.model_dump_json())
    redis_client.set(progress_key("nuc-ghost"), b"junk")  # a key with no inventory: ignored
    text = render_status(Store.open(tmp_path / "s.db"), redis_client, None)
    assert re.search(r"^nuc: job j9 \(c\): repetition 2 of 4, \d+ s$", text, re.MULTILINE), text
    assert "halo:" not in text


def test_a_broker_that_hangs_never_holds_the_job_thread() -> None:
    """Progress is written by the reporter's own thread: a broker that does not answer (a
    60 s socket timeout, retries) stalls that thread, never the job between repetitions."""
    answer = threading.Event()

    class Hanging:
        def set(self, *_args: object, **_kwargs: object) -> None:
            answer.wait()

    reporter = ProgressReporter(Hanging(), "halo")
    reporter.start_job("j1", "c1")  # returns although the SET hangs
    reporter.phase(Phase.REPETITION, 1, 3)
    assert reporter.record.phase is Phase.REPETITION
    assert not reporter.flush(timeout_s=0.2)  # still hanging, and the job went on
    answer.set()
    assert reporter.flush()


def test_a_progress_key_of_another_type_never_breaks_orch_status(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """A hostile writer can make the key a list or a hash: GETRANGE on it is a WRONGTYPE error,
    which must read as no progress, not fail `orch status`."""
    seconds, _ = redis_client.time()
    for host in ("halo", "nuc"):
        inventory = WorkerInventory(host=host, queue=queue_name(host, {}), configuration={},
                                    version="t", instance_id="i", pid=1, started_at=0,
                                    last_seen=float(seconds) + 3600)  # fmt: skip
        redis_client.set(INVENTORY_KEY.format(host=host), inventory.model_dump_json())
    redis_client.rpush(progress_key("halo"), b"x")
    redis_client.hset(progress_key("nuc"), "a", "b")
    assert read_progress(redis_client, "halo") is None
    text = render_status(Store.open(tmp_path / "s.db"), redis_client, None)
    assert "halo" in text and "halo:" not in text and "nuc:" not in text


@pytest.mark.parametrize(
    ("campaign", "repetitions", "rate"),
    [("c", 3, float("nan")), ("c", 3, -1.0), ("c", 2_000_000, 5.0), ("c" * 300, 3, 5.0)],
)
def test_figures_progress_cannot_hold_never_fail_the_job(
    campaign: str, repetitions: int, rate: float
) -> None:
    """A server's odd figure (NaN or negative tokens/s), a spec's many repetitions or a long
    campaign name are valid for the job: the progress view drops what it cannot show rather
    than raise in the job thread (which would turn a good run into an error)."""
    reporter = ProgressReporter(None, "halo")
    reporter.start_job("j1", campaign)
    reporter.phase(Phase.REPETITION, 1, repetitions, rate)
    reporter.phase(Phase.RUNNING, None, repetitions)
    record = reporter.record
    assert record.phase is Phase.RUNNING and record.job_id == "j1"
    assert record.tokens_per_s is None or record.tokens_per_s >= 0
    assert Progress.model_validate_json(record.model_dump_json()) == record
