"""The SQLite result store: schema, submissions, fenced idempotent upserts, collection."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.protocol import RESULTS_KEY
from jobs.result import MAX_RESULT_JSON_BYTES, EngineInfo, Measurement, RunResult, Status
from jobs.spec import JobSpec, Workload
from orchestrator.embedded import EmbeddedBroker
from orchestrator.errors import StoreError
from orchestrator.store import STORE_VERSION, JobRow, Store

STARTED = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _spec(
    host: str = "laptop-80w",
    model: str = "tiny:q8_0",
    context: int = 2048,
    campaign: str = "halo-vs-laptop",
) -> JobSpec:
    return JobSpec(
        campaign=campaign,
        host=host,
        engine="llama-bench",
        model=model,
        backend="cpu",
        context=context,
        configuration={"vram_split": "32G"},
        workload=Workload(prompt_tokens=64, gen_tokens=32),
        repetitions=3,
        timeout_s=600,
    )


def _result(
    spec: JobSpec,
    status: Status = Status.OK,
    attempt: int = 1,
    tg: tuple[float, ...] = (43.1, 42.8, 43.5),
    error: str | None = None,
) -> RunResult:
    depth = spec.context - spec.workload.prompt_tokens - spec.workload.gen_tokens
    measurements = (
        [
            Measurement(
                test="pp",
                n_prompt=64,
                n_gen=0,
                n_depth=depth,
                samples_ts=[812.4, 798.0, 805.3],
                samples_ns=[78_779_000, 80_200_000, 79_473_000],
            ),
            Measurement(
                test="tg",
                n_prompt=0,
                n_gen=32,
                n_depth=depth,
                samples_ts=list(tg),
                samples_ns=[round(32 / ts * 1e9) for ts in tg],
            ),
        ]
        if status is Status.OK
        else []
    )
    return RunResult(
        job_id=spec.job_id,
        campaign=spec.campaign,
        host=spec.host,
        queue=spec.queue,
        attempt=attempt,
        status=status,
        error=error,
        measurements=measurements,
        engine=EngineInfo(
            name="llama-bench",
            backend="cpu",
            binary="/opt/llama.cpp/bin/llama-bench",
            build_commit="4227c9be",
            build_number=6123,
        ),
        declared={"form_factor": "laptop", "power_limit_w": 80, "vram_split": "32G"},
        argv=["llama-bench", "-m", "tiny-q8_0.gguf", "-p", "64", "-n", "32", "-o", "json"],
        started_at=STARTED,
        finished_at=STARTED + timedelta(seconds=7 * attempt),
        worker_version="0.1.0",
        job=spec,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "data" / "orch.db")
    yield opened
    opened.close()


def _count(store: Store, table: str) -> int:
    return int(store.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _stored(store: Store, job_id: str) -> RunResult:
    stored = store.stored_result(job_id)
    assert stored is not None
    return stored


# -- opening ---------------------------------------------------------------------------------


def test_open_creates_the_folder_schema_and_version(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "orch.db"
    Store.open(path).close()

    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    version = conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()[0]
    conn.close()
    assert tables == {
        "meta", "campaigns", "jobs", "results", "rejected", "cancelled", "predictions",
        "result_flags", "result_series",
    }  # fmt: skip
    assert int(version) == STORE_VERSION == 3


def test_reopening_keeps_data_and_one_version_row(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    first = Store.open(path)
    first.record_job(_spec())
    first.close()

    again = Store.open(path)
    assert again.known_job_ids([_spec().job_id]) == {_spec().job_id}
    assert _count(again, "meta") == 1
    again.close()


def test_store_from_a_newer_orch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(STORE_VERSION + 1),))
    conn.commit()
    conn.close()

    with pytest.raises(StoreError) as info:
        Store.open(path)
    assert str(info.value) == (
        f"{path} was written by a newer orch (store version {STORE_VERSION + 1}); upgrade orch"
    )


def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")

    with pytest.raises(StoreError, match="cannot open the result store"):
        Store.open(blocker / "orch.db")


def test_file_that_is_not_sqlite_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    path.write_text("campaign,host\n" * 200)

    with pytest.raises(StoreError, match=f"the result store {path} is damaged"):
        Store.open(path)


# -- submissions -----------------------------------------------------------------------------


def test_record_job_and_known_job_ids(store: Store) -> None:
    a, b, c = _spec(context=512), _spec(context=2048), _spec(context=4096)
    store.record_job(a)
    store.record_job(b)
    store.record_job(a)  # re-submission: ignored

    assert _count(store, "jobs") == 2
    assert store.known_job_ids([a.job_id, b.job_id, c.job_id]) == {a.job_id, b.job_id}
    assert store.known_job_ids([c.job_id]) == set()
    assert store.known_job_ids([]) == set()
    row = store.conn.execute(
        "SELECT campaign, host, queue, spec FROM jobs WHERE job_id = ?", (a.job_id,)
    )
    campaign, host, queue, spec = row.fetchone()
    assert (campaign, host, queue) == ("halo-vs-laptop", "laptop-80w", "orch.laptop-80w.vram-32G")
    assert JobSpec.model_validate_json(spec) == a


def test_known_job_ids_beyond_one_query_chunk(store: Store) -> None:
    specs = [_spec(context=1000 + i) for i in range(1201)]
    for spec in specs[::2]:
        store.record_job(spec)

    known = store.known_job_ids([s.job_id for s in specs])
    assert known == {s.job_id for s in specs[::2]}
    assert len(known) == 601


def test_record_campaign_twice_keeps_one_row_and_the_new_matrix(store: Store) -> None:
    store.record_campaign("halo-vs-laptop", "/home/me/matrix.yaml", "campaign: halo-vs-laptop\n")
    store.record_campaign(
        "halo-vs-laptop", "/home/me/matrix2.yaml", "campaign: halo-vs-laptop\n#2\n"
    )

    rows = store.conn.execute("SELECT campaign, matrix_path, matrix_text FROM campaigns").fetchall()
    assert rows == [("halo-vs-laptop", "/home/me/matrix2.yaml", "campaign: halo-vs-laptop\n#2\n")]
    assert store.has_campaign("halo-vs-laptop")
    assert not store.has_campaign("other")


# -- results ---------------------------------------------------------------------------------


def test_upsert_same_result_twice_is_one_row(store: Store) -> None:
    result = _result(_spec())

    assert store.upsert_result(result) is True
    assert store.upsert_result(result) is False
    assert _count(store, "results") == 1
    assert _stored(store, result.job_id) == result


def test_higher_attempt_replaces_lower_is_ignored(store: Store) -> None:
    spec = _spec()
    first = _result(spec, Status.TIMEOUT, attempt=1, error="killed after 600 s")
    second = _result(spec, Status.OK, attempt=2, tg=(40.0, 41.0, 42.0))
    stale = _result(spec, Status.ERROR, attempt=1, error="exit code 139")

    assert store.upsert_result(first) is True
    assert store.upsert_result(second) is True
    assert store.upsert_result(stale) is False
    assert store.upsert_result(_result(spec, Status.ERROR, attempt=2, error="x")) is False

    assert _count(store, "results") == 1
    assert _stored(store, spec.job_id) == second
    status, attempt = store.conn.execute("SELECT status, attempt FROM results").fetchone()
    assert (status, attempt) == ("ok", 2)


def test_campaign_jobs_joins_results_in_submission_order(store: Store) -> None:
    specs = [_spec(context=4096), _spec(context=512), _spec(host="minipc-120w", context=2048)]
    for spec in specs:
        store.record_job(spec)
    store.record_job(_spec(campaign="other"))
    done = _result(specs[1])
    store.upsert_result(done)
    store.upsert_result(_result(_spec(context=8192)))  # a result for a job never submitted

    rows = store.campaign_jobs("halo-vs-laptop")

    assert rows == [JobRow(specs[0], None), JobRow(specs[1], done), JobRow(specs[2], None)]
    assert store.campaign_jobs("nobody") == []


def test_campaigns_count_jobs_finished_and_ok(store: Store) -> None:
    store.record_campaign("halo-vs-laptop", "matrix.yaml", "")
    store.record_campaign("empty", "empty.yaml", "")
    specs = [_spec(context=c) for c in (512, 1024, 2048, 4096)]
    for spec in specs:
        store.record_job(spec)
    store.upsert_result(_result(specs[0]))
    store.upsert_result(_result(specs[1]))
    store.upsert_result(_result(specs[2], Status.LOAD_FAILED, error="failed to load model"))

    summaries = {s.campaign: s for s in store.campaign_overview()}

    assert set(summaries) == {"halo-vs-laptop", "empty"}
    halo = summaries["halo-vs-laptop"]
    assert (halo.total, halo.finished, halo.ok) == (4, 3, 2)
    assert datetime.fromisoformat(halo.created_at).tzinfo is not None
    empty = summaries["empty"]
    assert (empty.total, empty.finished, empty.ok) == (0, 0, 0)


# -- collecting from a real Valkey -----------------------------------------------------------


def _announce(redis_client: Any, *bodies: str) -> None:
    """What a worker does: append RunResult JSON to the results stream."""
    for body in bodies:
        redis_client.xadd(RESULTS_KEY, {"result": body})


@pytest.mark.integration
def test_collect_reads_the_results_stream(store: Store, redis_client: Any) -> None:
    specs = [_spec(context=512), _spec(context=2048), _spec(host="minipc-120w")]
    for spec in specs[:2]:
        store.record_job(spec)
    results = [
        _result(specs[0]),
        _result(specs[1], Status.TIMEOUT, error="killed after 600 s"),
        _result(specs[2]),  # its job was submitted elsewhere: recorded from result.job
    ]
    _announce(redis_client, *(r.model_dump_json() for r in results))

    assert store.collect(redis_client) == 3

    assert store.campaign_jobs("halo-vs-laptop") == [
        JobRow(spec, result) for spec, result in zip(specs, results, strict=True)
    ]
    assert store.has_campaign("halo-vs-laptop")  # reportable though never submitted here
    assert store.collect(redis_client) == 0  # the cursor moved past them


@pytest.mark.integration
def test_two_stores_each_get_every_result(store: Store, redis_client: Any, tmp_path: Path) -> None:
    other = Store.open(tmp_path / "laptop.db")  # `orch status` run from another machine
    _announce(redis_client, _result(_spec()).model_dump_json())

    assert other.collect(redis_client) == 1
    assert store.collect(redis_client) == 1  # not taken away by the other store
    assert _count(store, "results") == _count(other, "results") == 1


@pytest.mark.integration
def test_a_result_announced_twice_counts_once(store: Store, redis_client: Any) -> None:
    raw = _result(_spec()).model_dump_json()
    _announce(redis_client, raw)
    assert store.collect(redis_client) == 1

    _announce(redis_client, raw)  # a worker re-announces a finished job on redelivery
    assert store.collect(redis_client) == 0
    assert _count(store, "results") == 1


@pytest.mark.integration
def test_collect_applies_attempt_fencing(store: Store, redis_client: Any) -> None:
    spec = _spec()
    later = _result(spec, attempt=3, tg=(39.0, 40.0, 41.0))
    earlier = _result(spec, Status.ERROR, attempt=2, error="exit code 134")
    _announce(redis_client, later.model_dump_json(), earlier.model_dump_json())

    assert store.collect(redis_client) == 1
    assert store.campaign_jobs("halo-vs-laptop") == [JobRow(spec, later)]


@pytest.mark.integration
def test_a_new_broker_is_read_from_its_start(store: Store, tmp_path: Path) -> None:
    """A cursor belongs to one broker's data: a fresh (e.g. embedded) broker starts at 0."""
    with EmbeddedBroker(tmp_path / "b1") as b1, EmbeddedBroker(tmp_path / "b2") as b2:
        first, second = redis.Redis.from_url(b1.url), redis.Redis.from_url(b2.url)
        _announce(first, _result(_spec(context=512)).model_dump_json())
        _announce(first, _result(_spec(context=1024)).model_dump_json())
        assert store.collect(first) == 2
        _announce(second, _result(_spec(context=2048)).model_dump_json())
        assert store.collect(second) == 1


@pytest.mark.integration
def test_unreadable_result_is_kept_and_read_again(store: Store, redis_client: Any) -> None:
    good = _result(_spec())
    body = json.loads(_result(_spec(context=4096)).model_dump_json())
    body["energy_j"] = 12.5  # a field this orch does not know (a newer worker)
    _announce(redis_client, json.dumps(body), good.model_dump_json())

    assert store.collect(redis_client) == 1  # the readable one is collected all the same
    assert store.rejected_count() == 1
    # after an "upgrade" that understands the entry, it is collected from the store's copy
    store.conn.execute("UPDATE rejected SET raw = json_remove(raw, '$.energy_j')")
    assert store.collect(redis_client) == 1
    assert store.rejected_count() == 0


@pytest.mark.integration
def test_an_oversized_stream_entry_is_kept_aside_as_its_head(
    store: Store, redis_client: Any
) -> None:
    """A result over MAX_RESULT_JSON_BYTES (forged, or an accident) is never parsed or stored:
    the store keeps 4 KB of it in `rejected`, with the reason, and goes on."""
    good = _result(_spec())
    huge = _result(_spec(context=4096), error="x" * (MAX_RESULT_JSON_BYTES + 1))
    _announce(redis_client, huge.model_dump_json(), good.model_dump_json())

    assert store.collect(redis_client) == 1  # the good one
    [(raw, reason)] = store.conn.execute("SELECT raw, reason FROM rejected").fetchall()
    assert len(raw) <= 4096 and reason.startswith("oversized: a result of 32.0 MiB")
    assert store.collect(redis_client) == 0 and store.rejected_count() == 1  # stays aside


def test_overview_is_the_same_with_and_without_the_covering_index(tmp_path: Path) -> None:
    # A store made before `results_outcome` existed (a read-only copy keeps none) counts alike.
    from tests.orchestrator.report_data import fill_store

    store = Store.open(tmp_path / "orch.db")
    fill_store(store)
    with_index = (store.campaign_overview(), store.done_by_queue())
    store.conn.execute("DROP INDEX results_outcome")
    store.close()
    old = Store.open(tmp_path / "orch.db")  # re-creates the index on open
    assert (old.campaign_overview(), old.done_by_queue()) == with_index
    old.conn.execute("DROP INDEX results_outcome")
    plain = Store(old.conn, old.path)
    assert (plain.campaign_overview(), plain.done_by_queue()) == with_index
    assert with_index[0][0].finished == 6 and sum(with_index[1].values()) == 5
