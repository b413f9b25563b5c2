"""worker.outbox against a real Valkey: a result stays on the box until a store acknowledged
it, is published again when the broker lost it, and the outbox stays within its bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobs.acks import ACKED_KEY, ack_id, acknowledge
from jobs.protocol import FINAL_KEY, RESULTS_KEY
from jobs.result import RunResult, Status
from jobs.spec import JobSpec, Workload
from worker import runner
from worker.outbox import Outbox, adopt_old_files, outbox_folder
from worker.outbox import _entry as outbox_entry

pytestmark = pytest.mark.integration


def _result(campaign: str = "c", attempt: int = 1, status: Status = Status.OK) -> RunResult:
    job = JobSpec(
        campaign=campaign, host="box", engine="llama-bench", model="tiny:q8_0", backend="cpu",
        context=64, workload=Workload(prompt_tokens=16, gen_tokens=8), repetitions=2,
    )  # fmt: skip
    now = datetime.now(UTC)
    return RunResult(
        job_id=job.job_id, campaign=job.campaign, host=job.host, queue=job.queue,
        attempt=attempt, status=status, started_at=now, finished_at=now, worker_version="t",
        job=job,
    )  # fmt: skip


def _stream(redis_client: Any) -> list[RunResult]:
    entries = redis_client.xrange(RESULTS_KEY)
    return [RunResult.model_validate_json(fields[b"result"]) for _id, fields in entries]


def _ack_everything(redis_client: Any) -> None:
    """What a store does once it has committed what it read."""
    acknowledge(redis_client, [f[b"result"] for _id, f in redis_client.xrange(RESULTS_KEY)])


def test_a_published_result_stays_on_the_box_until_a_store_acknowledged_it(
    redis_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    result = runner.push(redis_client, _result(), spool)
    [[entry_id, fields]] = redis_client.xrange(RESULTS_KEY)
    [kept] = spool.iterdir()
    assert kept.read_bytes() == fields[b"result"]  # the very bytes published
    assert fields[b"ack"].decode() == ack_id(kept.read_bytes())
    assert kept.name == f"{ack_id(kept.read_bytes())}.{entry_id.decode()}.json"

    outbox = Outbox(spool)
    assert outbox.sweep(redis_client) == 0  # in the stream, not acknowledged: kept as it is
    assert list(spool.iterdir()) == [kept]
    assert _stream(redis_client) == [result]

    _ack_everything(redis_client)
    assert outbox.sweep(redis_client) == 0
    assert list(spool.iterdir()) == [kept]  # the next sweep is due only SWEEP_S later
    monkeypatch.setattr("worker.outbox.SWEEP_S", 0.0)
    assert outbox.sweep(redis_client) == 0
    assert list(spool.iterdir()) == []


def test_results_the_broker_lost_are_published_again_with_their_final_mark(
    redis_client: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    outbox = Outbox(spool)
    results = [runner.push(redis_client, _result(f"c{i}"), spool) for i in range(3)]
    assert outbox.sweep(redis_client) == 0  # the first sweep checks them all: all there
    redis_client.flushall()  # the broker restarted without its data

    assert outbox.sweep(redis_client) == 3
    assert sorted(_stream(redis_client), key=lambda r: r.campaign) == results
    for result in results:  # a resubmitted job is not run again
        assert redis_client.get(FINAL_KEY.format(job_id=result.job_id)) is not None
    assert len(list(spool.iterdir())) == 3
    assert Outbox(spool).sweep(redis_client) == 0  # not twice (a full check again)


def test_a_result_trimmed_from_the_stream_unrecorded_is_published_again(
    redis_client: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    result = runner.push(redis_client, _result(), spool)
    [[entry_id, _fields]] = redis_client.xrange(RESULTS_KEY)
    redis_client.xdel(RESULTS_KEY, entry_id)  # as XADD's MAXLEN does to the oldest
    # Same broker, same data otherwise: only the entry-by-entry check sees it (first sweep).
    assert runner.flush_spool(redis_client, spool) == 1
    assert _stream(redis_client) == [result]


def test_an_entry_id_reused_for_another_result_is_not_taken_for_ours(
    redis_client: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    runner.push(redis_client, _result("ours"), spool)
    [[entry_id, _fields]] = redis_client.xrange(RESULTS_KEY)
    redis_client.flushall()
    # A broker that came back empty gave the same entry id to another box's result.
    other = _result("theirs").model_dump_json()
    redis_client.xadd(RESULTS_KEY, {"result": other, "ack": ack_id(other)}, id=entry_id)
    assert runner.flush_spool(redis_client, spool) == 1
    assert {r.campaign for r in _stream(redis_client)} == {"ours", "theirs"}


def test_a_result_kept_while_the_broker_was_away_is_published_by_the_sweep(
    redis_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis as redis_lib

    monkeypatch.setattr(runner, "_PUSH_RETRY_S", (0,))

    class BrokerDown:
        def pipeline(self, transaction: bool = True) -> None:
            raise redis_lib.ConnectionError("connection refused")

    spool = tmp_path / "spool"
    result = runner.push(BrokerDown(), _result(), spool)
    [kept] = spool.iterdir()
    assert kept.name == f"{ack_id(kept.read_bytes())}.json"  # not published yet
    assert Outbox(spool).sweep(redis_client) == 1
    assert _stream(redis_client) == [result]
    [entry_id] = [i.decode() for i, _f in redis_client.xrange(RESULTS_KEY)]
    assert [p.name for p in spool.iterdir()] == [f"{kept.stem}.{entry_id}.json"]


def test_a_kept_result_a_later_one_superseded_is_dropped_not_published(
    redis_client: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    runner.push(redis_client, _result(attempt=1), spool)
    later = runner.push(redis_client, _result(attempt=2, status=Status.ERROR), None)
    redis_client.delete(RESULTS_KEY)  # attempt 1's entry is gone, attempt 2's final mark not
    assert runner.flush_spool(redis_client, spool) == 0
    assert list(spool.iterdir()) == []
    assert (
        redis_client.get(FINAL_KEY.format(job_id=later.job_id)) == later.model_dump_json().encode()
    )


def test_a_file_in_the_outbox_that_is_not_what_the_agent_wrote_is_set_aside(
    redis_client: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / f"{'0' * 40}.json").write_text(_result().model_dump_json())  # name != content
    (spool / "legacy-garbage.json").write_bytes(b"")
    (spool / "settings.restore").write_text("{}")  # the settings journal lives here too
    assert runner.flush_spool(redis_client, spool) == 0
    assert sorted(p.name for p in spool.iterdir()) == [
        f"{'0' * 40}.bad",
        "legacy-garbage.bad",
        "settings.restore",
    ]
    assert _stream(redis_client) == []


def test_a_result_spooled_by_an_older_orch_is_published_and_kept(
    redis_client: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    old = _result()
    (spool / f"{old.job_id}.json").write_text(old.model_dump_json())
    assert runner.flush_spool(redis_client, spool) == 1
    assert _stream(redis_client) == [old]
    [kept] = spool.iterdir()
    assert kept.name.startswith(ack_id(old.model_dump_json()))


def test_the_outbox_lets_the_oldest_published_results_go_when_full_never_unpublished_ones(
    redis_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis as redis_lib

    spool = tmp_path / "spool"
    monkeypatch.setattr("worker.outbox.MAX_RESULTS", 3)
    monkeypatch.setattr(runner, "_PUSH_RETRY_S", ())

    class BrokerDown:
        def pipeline(self, transaction: bool = True) -> None:
            raise redis_lib.ConnectionError("connection refused")

    unpublished = runner.push(BrokerDown(), _result("away"), spool)
    first = runner.push(redis_client, _result("c0"), spool)
    for i in range(1, 5):
        runner.push(redis_client, _result(f"c{i}"), spool)
    names = sorted(p.name for p in spool.iterdir())
    assert len(names) == 3
    kept_bodies = {RunResult.model_validate_json((spool / n).read_bytes()).campaign for n in names}
    assert kept_bodies == {"away", "c3", "c4"}  # the newest published, and the unpublished one
    assert unpublished.campaign == "away" and first.campaign == "c0"

    for i in range(3):  # nothing but unpublished results: over the bound, none let go
        runner.push(BrokerDown(), _result(f"away{i}"), spool)
    assert sorted(p.name.count(".") for p in spool.iterdir()) == [1, 1, 1, 1]


def test_an_entry_the_job_thread_holds_is_left_alone_by_the_heartbeat(
    redis_client: Any, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "spool")
    body = _result().model_dump_json()
    entry = outbox.keep(body)  # written, about to be published by the job thread
    assert Outbox(outbox.folder).sweep(redis_client) == 0
    assert _stream(redis_client) == []
    outbox.release(entry)
    assert Outbox(outbox.folder).sweep(redis_client) == 1


def test_acknowledgements_are_bounded(redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jobs.acks.ACKED_MAX", 5)
    start = datetime.now(UTC)
    for i in range(8):
        at = (start + timedelta(seconds=i)).timestamp()
        acknowledge(redis_client, [f"result {i}"], now=at)
    assert redis_client.zcard(ACKED_KEY) == 5
    kept = {m.decode() for m in redis_client.zrange(ACKED_KEY, 0, -1)}
    assert kept == {ack_id(f"result {i}") for i in range(3, 8)}  # the newest


def test_each_broker_address_has_its_own_outbox(tmp_path: Path) -> None:
    """A result kept for one broker is never published into another (a test's, a new lab's):
    the folder is named by the address, not by the credentials, which may change meanwhile."""
    spool = tmp_path / "spool"
    a = outbox_folder(spool, "redis://:old@10.0.0.5:6379/0")
    assert a == outbox_folder(spool, "redis://:new@10.0.0.5:6379/0")
    assert a == outbox_folder(spool, "redis://10.0.0.5:6379/0?password=x")
    others = {
        outbox_folder(spool, url)
        for url in ("redis://10.0.0.5:6380/0", "redis://10.0.0.5:6379/1", "redis://10.0.0.6:6379/0")
    }
    assert a not in others and len(others) == 3
    assert all(folder.parent == spool and folder.name.startswith("outbox-") for folder in others)
    assert "old" not in a.name and "new" not in a.name
    assert outbox_folder(spool, "redis://h:notaport/0").parent == spool  # no exception


def test_results_an_older_orch_spooled_join_the_outbox(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "0123456789abcdef.json").write_text("{}")  # an older orch's `<job id>.json`
    (spool / "settings.restore").write_text("journal")  # not a result: stays
    folder = outbox_folder(spool, "redis://h:6379/0")

    assert adopt_old_files(spool, folder) == 1
    assert [p.name for p in folder.iterdir()] == ["0123456789abcdef.json"]
    assert (spool / "settings.restore").is_file()


def test_a_result_the_broker_lost_does_not_undo_a_retry_made_since(
    redis_client: Any, tmp_path: Path
) -> None:
    """The broker restarts empty (acknowledgements gone), `orch retry` resets the failed job,
    then the box sweeps: its old failure must not become final again, or the retried job,
    once delivered, is taken for done and never runs."""
    from jobs.finality import reset_for_retry

    spool = tmp_path / "spool"
    outbox = Outbox(spool)
    failed = runner.push(redis_client, _result(status=Status.ERROR), spool)
    assert outbox.sweep(redis_client) == 0
    redis_client.flushall()  # the broker restarted without its data
    reset_for_retry(redis_client, failed.job_id, failed.attempt)  # the store had the failure

    assert outbox.sweep(redis_client) == 0
    assert redis_client.get(FINAL_KEY.format(job_id=failed.job_id)) is None  # it runs again
    assert list(spool.iterdir()) == []  # superseded by the retry: let go


def test_an_odd_file_in_the_outbox_does_not_stop_the_sweep_of_the_others(
    redis_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that cannot be renamed (here an older orch's result whose new name is taken by a
    folder) is left where it is; the sweep still forgets and publishes the rest, every time."""
    monkeypatch.setattr("worker.outbox.SWEEP_S", 0.0)
    spool = tmp_path / "spool"
    outbox = Outbox(spool)
    runner.push(redis_client, _result("a"), spool)
    [published] = spool.iterdir()
    odd = _result("b").model_dump_json()
    (spool / "ffffffffffffffff.json").write_text(odd)
    (spool / f"{ack_id(odd)}.json").mkdir()  # where it would be renamed to
    _ack_everything(redis_client)
    outbox.sweep(redis_client)  # neither raises nor holds on to what it had claimed
    outbox.sweep(redis_client)
    assert not published.exists()  # acknowledged: forgotten
    assert (spool / f"{ack_id(odd)}.bad").is_dir()  # not what the agent wrote: set aside
    # ... so the older orch's result could take its name and went out on the second sweep.
    assert [r.campaign for r in _stream(redis_client)] == ["a", "b"]


def test_a_name_with_an_entry_id_beyond_64_bits_is_not_taken_for_a_result(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    folder.mkdir()
    planted = folder / f"{'a' * 40}.99999999999999999999-0.json"
    planted.write_text("{}")
    assert outbox_entry(planted) is None
    assert outbox_entry(folder / f"{'a' * 40}.1796161777595-0.json") is not None
