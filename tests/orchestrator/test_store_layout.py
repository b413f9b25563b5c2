"""The store's layout for reading (orchestrator/store_layout.py, store_read.py) and the migration
from the layout before it.

`tests/fixtures/store/orch-v2.db` is a store written by the orch before this layout (store
version 2, commit 227df82): `fill_store` of tests/orchestrator/report_data.py, the data of the
golden reports, with the campaign dates fixed as test_report_golden.py fixes them (see
tests/fixtures/store/README.md). It is migrated here as a user's store would be, and read as
it is (read-only) through the full results.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.result import RunResult
from orchestrator import store_layout
from orchestrator.errors import StoreError
from orchestrator.report import PivotOptions, build_pivot, render
from orchestrator.report.campaigns import render_campaigns
from orchestrator.status import render_status
from orchestrator.store import STORE_VERSION, JobRow, Store
from orchestrator.storeerrors import open_read_only
from tests.orchestrator.report_data import CAMPAIGN, fill_store
from tests.orchestrator.test_report_golden import GOLDEN, REPORTS
from tests.orchestrator.test_store_errors import _read_only as orch_on_read_only_mount

V2_STORE = Path(__file__).parent.parent / "fixtures" / "store" / "orch-v2.db"
# Every table of layout 2.
V2_TABLES = ("meta", "campaigns", "jobs", "results", "cancelled", "predictions", "rejected")


@pytest.fixture
def v2_copy(tmp_path: Path) -> Path:
    path = tmp_path / "orch.db"
    shutil.copyfile(V2_STORE, path)
    return path


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[Store]:
    """A store written by today's write path (the golden data)."""
    store = Store.open(tmp_path / "new.db")
    fill_store(store)
    yield store
    store.close()


def _rows(path: Path, tables: tuple[str, ...] = V2_TABLES) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(path)
    try:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        conn.close()


def _read_only(path: Path) -> Store:
    """The store as `Store.open` opens a file it cannot write (root could write any file here)."""
    return Store(open_read_only(path), path, read_only=True)


def _full_results(store: Store) -> dict[str, RunResult]:
    """Every stored result put back together (`Store.stored_result`)."""
    ids = [job_id for (job_id,) in store.conn.execute("SELECT job_id FROM results")]
    return {job_id: result for job_id in ids if (result := store.stored_result(job_id))}


def _v2_results() -> dict[str, RunResult]:
    """The fixture's results as the previous code stored them: whole, as the worker sent them."""
    conn = sqlite3.connect(V2_STORE)
    try:
        rows = conn.execute("SELECT job_id, result FROM results").fetchall()
    finally:
        conn.close()
    return {job_id: RunResult.model_validate_json(text) for job_id, text in rows}


def _canonical(result: RunResult) -> str:
    return json.dumps(json.loads(result.model_dump_json()), sort_keys=True)


# -- the fixture is what it says ------------------------------------------------------------------


def test_the_fixture_is_a_version_2_store_with_the_golden_data() -> None:
    rows = _rows(V2_STORE)
    assert ("version", "2") in rows["meta"]
    assert len(rows["jobs"]) == 7 and len(rows["results"]) == 6
    conn = sqlite3.connect(V2_STORE)
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == set(V2_TABLES)


# -- migration ------------------------------------------------------------------------------------


def _without_result(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return [row[:5] + row[6:] for row in rows]  # `results` less its `result` column


def test_migration_keeps_every_row_and_splits_each_result(v2_copy: Path) -> None:
    before = _rows(v2_copy)

    Store.open(v2_copy).close()

    after = _rows(v2_copy)
    meta = dict(after.pop("meta"))
    assert meta.pop("version") == str(STORE_VERSION) == "3"
    assert meta == {k: v for k, v in before.pop("meta") if k != "version"}
    assert _without_result(after.pop("results")) == _without_result(before.pop("results"))
    assert after == before  # nothing lost, nothing changed
    parts = _rows(v2_copy, ("result_flags", "result_series"))
    assert sorted(r[0] for r in parts["result_flags"]) == sorted(_v2_results())
    # the four finished runs carry series; the load failure and the skipped job none
    assert len(parts["result_series"]) == 4
    # each result's bytes are kept once: the series and the job spec are no longer in it
    conn = sqlite3.connect(v2_copy)
    bodies = [json.loads(text) for (text,) in conn.execute("SELECT result FROM results")]
    conn.close()
    assert not any("job" in b or "series" in (b.get("telemetry") or {}) for b in bodies)


def test_a_migrated_result_put_back_together_is_the_one_the_worker_sent(v2_copy: Path) -> None:
    sent = _v2_results()
    store = Store.open(v2_copy)
    try:
        back = _full_results(store)
    finally:
        store.close()
    assert back == sent
    assert {k: _canonical(r) for k, r in back.items()} == {
        k: _canonical(r) for k, r in sent.items()
    }
    assert sum(1 for r in sent.values() if r.telemetry and r.telemetry.series) == 4


def test_a_result_written_today_put_back_together_is_the_one_sent(tmp_path: Path) -> None:
    sent: list[RunResult] = []
    store = Store.open(tmp_path / "orch.db")
    real_upsert = store.upsert_result

    def keep(result: RunResult) -> bool:
        sent.append(result.model_copy(deep=True))
        return real_upsert(result)

    store.upsert_result = keep  # type: ignore[method-assign]
    try:
        fill_store(store)
        assert len(sent) == 6 and all(r.job is not None for r in sent)
        for result in sent:
            back = store.stored_result(result.job_id)
            assert back == result and back is not None
            assert back.model_dump_json() == result.model_dump_json()
        assert store.stored_result("no such job") is None
    finally:
        store.close()


@pytest.mark.parametrize(("name", "fmt", "options"), REPORTS)
def test_a_migrated_store_gives_the_golden_reports(
    v2_copy: Path, name: str, fmt: str, options: PivotOptions
) -> None:
    store = Store.open(v2_copy)
    try:
        text = render(build_pivot(CAMPAIGN, store.campaign_jobs(CAMPAIGN), options), fmt)
        assert text == (GOLDEN / name).read_bytes().decode()
        assert render_campaigns(store) + "\n" == (GOLDEN / "campaigns.txt").read_text()
    finally:
        store.close()


def test_migration_is_idempotent_and_an_up_to_date_store_opens_without_the_write_lock(
    v2_copy: Path,
) -> None:
    Store.open(v2_copy).close()
    once = _rows(v2_copy, (*V2_TABLES, "result_flags", "result_series"))

    other = sqlite3.connect(v2_copy, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another orch command writing
    try:
        Store.open(v2_copy).close()
    finally:
        other.execute("ROLLBACK")
        other.close()

    assert _rows(v2_copy, (*V2_TABLES, "result_flags", "result_series")) == once


def test_a_migration_that_fails_half_way_leaves_the_store_as_it_was(
    v2_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fail_on_second_batch(conn: sqlite3.Connection, rows: list[object]) -> None:
        calls.append(rows)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store_layout, "write_parts", fail_on_second_batch)
    with pytest.raises(StoreError, match="full"):
        Store.open(v2_copy)
    monkeypatch.undo()

    assert calls  # it did get as far as writing
    conn = sqlite3.connect(v2_copy)
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    version = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0]
    conn.close()
    assert version == "2" and "result_flags" not in tables
    assert _rows(v2_copy) == _rows(V2_STORE)


def test_a_store_from_a_newer_orch_is_refused_before_anything_is_written(v2_copy: Path) -> None:
    conn = sqlite3.connect(v2_copy)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(STORE_VERSION + 1),))
    conn.commit()
    conn.close()
    rows = _rows(v2_copy)

    for opening in (Store.open, _read_only):
        with pytest.raises(StoreError, match="written by a newer orch"):
            opening(v2_copy)
    with pytest.raises(StoreError, match=rf"{STORE_VERSION + 1}\); upgrade orch"):
        Store.open(v2_copy)
    assert _rows(v2_copy) == rows


# -- the read path agrees with the full results ---------------------------------------------------


def _agrees_with_full_json(store: Store) -> None:
    full = _full_results(store)
    rows = store.campaign_jobs(CAMPAIGN)
    assert sum(1 for r in rows if r.result is not None) == len(full) == 6
    for row in rows:
        if row.result is None:
            continue
        whole = full[row.spec.job_id]
        assert row.result.job == whole.job  # put back from the job's row
        row.series()  # the series, read apart
        assert row.result == whole


def test_split_reads_agree_with_the_results_put_together(filled: Store, v2_copy: Path) -> None:
    _agrees_with_full_json(filled)  # written by today's write path
    migrated = Store.open(v2_copy)
    try:
        _agrees_with_full_json(migrated)
    finally:
        migrated.close()


def test_a_report_reads_no_series_until_a_chart_asks(filled: Store) -> None:
    rows = filled.campaign_jobs(CAMPAIGN)
    ok = [r for r in rows if r.result is not None and r.result.telemetry is not None]
    assert ok and all(
        r.result.telemetry.series == {} for r in ok if r.result and r.result.telemetry
    )
    assert set(ok[0].series()) >= {"t_s", "gpu_busy_pct"}


def test_html_from_the_split_results_is_the_html_from_whole_ones(
    filled: Store, v2_copy: Path
) -> None:
    new = render(build_pivot(CAMPAIGN, filled.campaign_jobs(CAMPAIGN)), "html")
    old = _read_only(v2_copy)  # an old read-only store: every result parsed whole
    try:
        assert not old.split
        full = render(build_pivot(CAMPAIGN, old.campaign_jobs(CAMPAIGN)), "html")
    finally:
        old.close()
    assert new.count('data-kind="timeline"') == 4
    assert new == full


# -- a read-only store of the older layout --------------------------------------------------------


@pytest.mark.parametrize(("name", "fmt", "options"), REPORTS)
def test_a_read_only_old_store_is_read_through_its_full_results(
    v2_copy: Path, name: str, fmt: str, options: PivotOptions
) -> None:
    before = _rows(v2_copy)
    store = _read_only(v2_copy)
    try:
        assert not store.split
        text = render(build_pivot(CAMPAIGN, store.campaign_jobs(CAMPAIGN), options), fmt)
    finally:
        store.close()
    assert text == (GOLDEN / name).read_bytes().decode()
    assert _rows(v2_copy) == before  # never migrated


def test_orch_report_on_a_read_only_mount_of_an_old_store(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a folder read-only")
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copyfile(V2_STORE, folder / "orch.db")
    probe = subprocess.run(["unshare", "-m", "mount", "--bind", str(folder), str(folder)],
                           capture_output=True, text=True)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.strip()}")

    shown = orch_on_read_only_mount(folder, "--store", str(folder / "orch.db"), "report", CAMPAIGN)

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == (GOLDEN / "report.txt").read_text() + "\n"
    assert _rows(folder / "orch.db") == _rows(V2_STORE)


# -- status ---------------------------------------------------------------------------------------


def _counted_from_results(rows: list[JobRow]) -> tuple[object, ...]:
    """What `orch status CAMPAIGN` counted from parsed results before it counted in SQL."""
    per_queue: dict[str, Counter[str]] = {}
    for row in rows:
        state = (
            row.result.status.value if row.result else "cancelled" if row.cancelled else "waiting"
        )
        per_queue.setdefault(row.spec.queue, Counter())[state] += 1
    results = [r.result for r in rows if r.result is not None]
    return (
        len(rows),
        len(results),
        {q: dict(c) for q, c in per_queue.items()},
        sum(1 for r in results if r.load_time_s is not None),
        len({r.spec.load_group() for r in rows if r.result and r.result.requests}),
        sum(1 for r in results if r.disturbed),
    )


def test_status_counts_agree_with_the_parsed_results(filled: Store, v2_copy: Path) -> None:
    filled.mark_cancelled([r.spec.job_id for r in filled.campaign_jobs(CAMPAIGN) if not r.result])
    stores = [filled, _read_only(v2_copy)]
    texts = []
    for store in stores:
        progress = store.campaign_progress(CAMPAIGN)
        counted = (progress.total, progress.finished, progress.by_queue, progress.loads,
                   progress.load_groups, progress.disturbed)  # fmt: skip
        assert counted == _counted_from_results(store.campaign_jobs(CAMPAIGN))
        texts.append(render_status(store, None, CAMPAIGN))
    assert "6/7 jobs finished" in texts[0] and "cancelled" in texts[0]
    assert "6/7 jobs finished" in texts[1] and "waiting" in texts[1]
    assert filled.campaign_progress(CAMPAIGN).loads == 4  # not a constant: the data has loads
    stores[1].close()


# -- the parts follow their result ----------------------------------------------------------------


def _parts(store: Store) -> tuple[int, int]:
    flags = store.conn.execute("SELECT COUNT(*) FROM result_flags").fetchone()[0]
    series = store.conn.execute("SELECT COUNT(*) FROM result_series").fetchone()[0]
    return int(flags), int(series)


def test_forgetting_or_resubmitting_a_result_drops_its_parts(filled: Store) -> None:
    rows = [r for r in filled.campaign_jobs(CAMPAIGN) if r.result and r.result.telemetry]
    assert _parts(filled) == (6, 4)

    filled.forget_result(rows[0].spec.job_id)
    filled.record_jobs([rows[1].spec], forget_results={rows[1].spec.job_id})

    assert _parts(filled) == (4, 2)
    assert filled.series_of(rows[0].spec.job_id) == {}


def test_a_superseding_result_replaces_the_stored_one(filled: Store) -> None:
    row = next(r for r in filled.campaign_jobs(CAMPAIGN) if r.result and r.result.telemetry)
    assert row.result is not None
    whole = _full_results(filled)[row.spec.job_id]
    later = whole.model_copy(update={"attempt": whole.attempt + 1, "load_time_s": 99.0})

    assert filled.upsert_result(later)
    assert not filled.upsert_result(whole)  # the earlier attempt does not come back

    again = next(r for r in filled.campaign_jobs(CAMPAIGN) if r.spec.job_id == row.spec.job_id)
    again.series()
    assert again.result == later


def test_a_result_without_flags_is_read_whole(filled: Store) -> None:
    # e.g. written by hand, or one the migration could not split: read as before the layout
    row = next(r for r in filled.campaign_jobs(CAMPAIGN) if r.result and r.result.telemetry)
    whole = _full_results(filled)[row.spec.job_id]
    filled.conn.execute("DELETE FROM result_flags WHERE job_id = ?", (row.spec.job_id,))
    filled.conn.execute("DELETE FROM result_series WHERE job_id = ?", (row.spec.job_id,))
    filled.conn.execute(
        "UPDATE results SET result = ? WHERE job_id = ?", (whole.model_dump_json(), row.spec.job_id)
    )

    again = next(r for r in filled.campaign_jobs(CAMPAIGN) if r.spec.job_id == row.spec.job_id)

    assert again.result == whole and again.series() == whole.telemetry.series  # type: ignore[union-attr]
    assert filled.stored_result(row.spec.job_id) == whole


def test_a_store_of_the_unreleased_first_layout_3_is_split_when_opened(v2_copy: Path) -> None:
    # that draft kept each result whole beside `result_views` (and an index `result_flags`)
    conn = sqlite3.connect(v2_copy)
    conn.execute("CREATE TABLE result_views (job_id TEXT PRIMARY KEY, view TEXT NOT NULL)")
    conn.execute("CREATE INDEX result_flags ON result_views (job_id)")
    conn.execute("UPDATE meta SET value = '3' WHERE key = 'version'")
    conn.commit()
    conn.close()
    read_only = _read_only(v2_copy)
    try:
        assert not read_only.split and _full_results(read_only) == _v2_results()
    finally:
        read_only.close()

    store = Store.open(v2_copy)
    try:
        assert store.split and _full_results(store) == _v2_results()
        assert _parts(store) == (6, 4)
    finally:
        store.close()
