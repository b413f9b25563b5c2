"""The store's SQLite layout, its version and the migrations between versions.

`results.result` keeps every result's full JSON, as the worker sent it: the source of truth.
Beside it, since version 3, each result is also kept split for reading (`split_result`):

- `result_views`: the JSON without its telemetry series and without the copy of the job spec
  (the `jobs` row has it), which a report parses (a llama-server result's series are two
  thirds of its bytes), plus the flags `orch status` counts, so it parses nothing;
- `result_series`: the telemetry series alone, read only for the charts that draw them.

Triggers drop a result's parts whenever its `results` row goes (forget, re-submit), so no
part outlives its result. `open_layout` creates or migrates the layout when a store is opened
for writing: one transaction, the version in `meta`, nothing done twice; a store written by a
newer orch is refused before anything is written to it.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import StoreError

# Version of the SQLite layout. History:
#   1 - campaigns, jobs, results (RunResult JSON), rejected (unreadable stream entries) and
#       cancelled tables; meta holds one stream cursor per broker.
#   2 - predictions: the planner's verdict per job at submit (checked against the outcome).
#   3 - result_views and result_series: each result split for reading (see the module), and
#       indexes covering what status and campaigns count (jobs_outline, result_flags); the
#       migration from 2 splits every stored result, `results` itself is left as it was.
STORE_VERSION = 3

# One statement per item: they run inside the opening transaction (executescript would
# commit it first).
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS campaigns (
        campaign TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        matrix_path TEXT,
        matrix_text TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY,
        campaign TEXT NOT NULL,
        host TEXT NOT NULL,
        queue TEXT NOT NULL,
        spec TEXT NOT NULL,
        submitted_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_campaign ON jobs (campaign)",
    # Version 3. Covers what `orch status` and `orch campaigns` read of each job, so they never
    # read a job's spec (a cold 100k-job store: the index's pages instead of the whole table).
    "CREATE INDEX IF NOT EXISTS jobs_outline ON jobs (campaign, job_id, host, queue)",
    """CREATE TABLE IF NOT EXISTS results (
        job_id TEXT PRIMARY KEY,
        campaign TEXT NOT NULL,
        host TEXT NOT NULL,
        status TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        result TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        collected_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS results_campaign ON results (campaign)",
    # Covers what `orch status` and `orch campaigns` count, so they never read a stored result:
    # finished_at sits after the large `result` column, in its overflow pages.
    "CREATE INDEX IF NOT EXISTS results_outcome ON results (job_id, status, finished_at)",
    "CREATE TABLE IF NOT EXISTS cancelled (job_id TEXT PRIMARY KEY, cancelled_at TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS predictions (
        job_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        needs_bytes INTEGER NOT NULL,
        text TEXT NOT NULL,
        predicted_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS rejected (
        broker_id TEXT NOT NULL,
        entry_id TEXT NOT NULL,
        raw TEXT NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (broker_id, entry_id)
    )""",
    # Version 3. The flags are what `orch status CAMPAIGN` counts besides the status.
    """CREATE TABLE IF NOT EXISTS result_views (
        job_id TEXT PRIMARY KEY,
        job_is_row INTEGER NOT NULL,
        loaded INTEGER NOT NULL,
        has_requests INTEGER NOT NULL,
        disturbed INTEGER NOT NULL,
        view TEXT NOT NULL
    )""",
    # A view fills a page or more: counting the flags reads this index, not the views.
    "CREATE INDEX IF NOT EXISTS result_flags ON result_views "
    "(job_id, loaded, has_requests, disturbed)",
    "CREATE TABLE IF NOT EXISTS result_series (job_id TEXT PRIMARY KEY, series TEXT NOT NULL)",
    """CREATE TRIGGER IF NOT EXISTS results_parts_go AFTER DELETE ON results BEGIN
        DELETE FROM result_views WHERE job_id = old.job_id;
        DELETE FROM result_series WHERE job_id = old.job_id;
    END""",
)


@dataclass(frozen=True)
class ResultParts:
    """A stored result split for reading (see the module)."""

    view: str  # the result's JSON without telemetry series (and `job` when job_is_row)
    job_is_row: bool  # its `job` was the job's own `jobs` row: the view leaves it out
    series: str | None  # the telemetry series as JSON; None when it has none
    loaded: bool  # the job loaded the model (load_time_s is set)
    has_requests: bool  # a server engine's per-request samples
    disturbed: bool  # RunResult.disturbed


def split_result(result_json: str, spec_json: str | None) -> ResultParts:
    """Split a stored result's full JSON (as `RunResult.model_dump_json` wrote it); `spec_json`
    is its job's `jobs` row, if any.

    The view parses back to the same RunResult less its series, and less its `job` where that
    equals the row (a reader puts the row's spec back: parsing it twice would cost as much as
    the rest of the result). tests/orchestrator/test_store_layout.py checks the round trip.
    """
    body = json.loads(result_json)
    if not isinstance(body, dict):
        raise ValueError("a stored result is a JSON object")
    job = body.get("job")
    job_is_row = job is not None and spec_json is not None and job == json.loads(spec_json)
    if job_is_row:
        del body["job"]
    telemetry = body.get("telemetry")
    series = telemetry.pop("series", None) if isinstance(telemetry, dict) else None
    disturbance = body.get("disturbance")
    return ResultParts(
        view=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        job_is_row=job_is_row,
        series=json.dumps(series, separators=(",", ":")) if series else None,
        loaded=body.get("load_time_s") is not None,
        has_requests=bool(body.get("requests")),
        disturbed=isinstance(disturbance, dict) and bool(disturbance.get("disturbed")),
    )


def write_parts(conn: sqlite3.Connection, rows: list[tuple[str, ResultParts]]) -> None:
    """Store the parts of each (job id, parts), replacing what a job had."""
    conn.executemany(
        "INSERT OR REPLACE INTO result_views VALUES (?, ?, ?, ?, ?, ?)",
        [
            (job_id, p.job_is_row, p.loaded, p.has_requests, p.disturbed, p.view)
            for job_id, p in rows
        ],
    )
    conn.executemany("DELETE FROM result_series WHERE job_id = ?", [(j,) for j, _ in rows])
    conn.executemany(
        "INSERT INTO result_series VALUES (?, ?)",
        [(job_id, p.series) for job_id, p in rows if p.series is not None],
    )


def stored_version(conn: sqlite3.Connection) -> int | None:
    """The layout version in `meta` (None: a new, empty store)."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if not has_meta:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
    return int(row[0]) if row is not None else None


def refuse_newer(path: Path, version: int | None) -> None:
    if version is not None and version > STORE_VERSION:
        raise StoreError(
            f"{path} was written by a newer orch (store version {version}); upgrade orch"
        )


def open_layout(conn: sqlite3.Connection, path: Path) -> None:
    """Create the layout of a new store, or migrate an older one to STORE_VERSION, in one
    transaction: a crash or a full disk half-way leaves the store as it was. A store already
    at STORE_VERSION is only read (another command may hold the write lock meanwhile)."""
    version = stored_version(conn)
    refuse_newer(path, version)
    if version == STORE_VERSION and _complete(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = stored_version(conn)  # again: another process may have migrated it
        refuse_newer(path, version)
        for statement in _SCHEMA:
            conn.execute(statement)
        if version is not None and version < 3:
            _split_stored_results(conn)
        conn.execute(
            "INSERT INTO meta VALUES ('version', ?) ON CONFLICT(key) DO UPDATE SET "
            "value = excluded.value",
            (str(STORE_VERSION),),
        )
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# The names the layout creates (a copy may lack an index added without a version change).
_NAMES = frozenset(re.findall(r"IF NOT EXISTS (\w+)", " ".join(_SCHEMA)))


def _complete(conn: sqlite3.Connection) -> bool:
    have = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    return _NAMES <= have


_MIGRATION_BATCH = 500


def _split_stored_results(conn: sqlite3.Connection) -> None:
    """Version 2 -> 3: the parts of every stored result (each read once, in batches)."""
    cursor = conn.execute(
        "SELECT r.job_id, r.result, j.spec FROM results r LEFT JOIN jobs j ON j.job_id = r.job_id "
        "WHERE NOT EXISTS (SELECT 1 FROM result_views v WHERE v.job_id = r.job_id)"
    )
    while batch := cursor.fetchmany(_MIGRATION_BATCH):
        parts = []
        for job_id, text, spec in batch:
            try:
                parts.append((job_id, split_result(text, spec)))
            except ValueError:
                # Not a JSON object: readers fall back to `results.result` for it, as
                # before the migration, and say what is wrong there.
                continue
        write_parts(conn, parts)
