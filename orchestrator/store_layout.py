"""The store's SQLite layout, its version and the migrations between versions.

Since version 3 each result is stored split (`split_result`), every byte of it once:

- `results.result`: the result's JSON without its telemetry series and without its copy of
  the job spec where that is the job's `jobs` row: what a report parses (a llama-server
  result's series are two thirds of its bytes, the spec as much to parse as the rest);
- `result_flags`: whether the spec was left out, and the flags `orch status` counts, so that
  it parses nothing;
- `result_series`: the telemetry series alone, read only for the charts that draw them.

`Store.stored_result` (orchestrator/store_read.py) puts a result back together, equal to the
RunResult the worker sent. Triggers drop a result's parts whenever its `results` row goes
(forget, re-submit), so no part outlives its result. `open_layout` creates or migrates the
layout when a store is opened for writing: one transaction, the version in `meta`, nothing done
twice; a store written by a newer orch is refused before anything is written to it.
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
#   3 - each result stored split (see the module): `results.result` without series (nor the
#       job's spec where it is the `jobs` row), result_flags, result_series; an index covering
#       what status and campaigns read of jobs (jobs_outline). The migration from 2 rewrites
#       every stored result into its parts.
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
    # Version 3. job_is_row: `results.result` left out its job spec, the `jobs` row; the others
    # are what `orch status CAMPAIGN` counts besides the status. Without a rowid the table is
    # its own narrow index: counting reads it, never a result's page.
    """CREATE TABLE IF NOT EXISTS result_flags (
        job_id TEXT PRIMARY KEY,
        job_is_row INTEGER NOT NULL,
        loaded INTEGER NOT NULL,
        has_requests INTEGER NOT NULL,
        disturbed INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS result_series (job_id TEXT PRIMARY KEY, series TEXT NOT NULL)",
    """CREATE TRIGGER IF NOT EXISTS results_parts_go AFTER DELETE ON results BEGIN
        DELETE FROM result_flags WHERE job_id = old.job_id;
        DELETE FROM result_series WHERE job_id = old.job_id;
    END""",
)


@dataclass(frozen=True)
class ResultParts:
    """A result split for storing (see the module)."""

    body: str  # `results.result`: the JSON without telemetry series (nor `job` when job_is_row)
    job_is_row: bool  # its `job` was the job's own `jobs` row: the body leaves it out
    series: str | None  # the telemetry series as JSON; None when it has none
    loaded: bool  # the job loaded the model (load_time_s is set)
    has_requests: bool  # a server engine's per-request samples
    disturbed: bool  # RunResult.disturbed


def split_result(result_json: str, spec_json: str | None) -> ResultParts:
    """Split a result's full JSON (as `RunResult.model_dump_json` writes it); `spec_json` is
    its job's `jobs` row, if any.

    The body parses back to the same RunResult less its series, and less its `job` where that
    equals the row; `Store.stored_result` puts them back. tests/orchestrator/
    test_store_layout.py checks the round trip.
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
        body=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        job_is_row=job_is_row,
        series=json.dumps(series, separators=(",", ":")) if series else None,
        loaded=body.get("load_time_s") is not None,
        has_requests=bool(body.get("requests")),
        disturbed=isinstance(disturbance, dict) and bool(disturbance.get("disturbed")),
    )


def write_parts(conn: sqlite3.Connection, rows: list[tuple[str, ResultParts]]) -> None:
    """Store the flags and series of each (job id, parts), replacing what a job had (its body
    is the `results` row's, written by the caller)."""
    conn.executemany(
        "INSERT OR REPLACE INTO result_flags VALUES (?, ?, ?, ?, ?)",
        [(job_id, p.job_is_row, p.loaded, p.has_requests, p.disturbed) for job_id, p in rows],
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
        # A store of this layout's first draft (never released) kept whole results beside
        # `result_views`: split like a version 2 store.
        draft = _has_table(conn, "result_views")
        if draft:
            conn.execute("DROP TABLE result_views")  # with its index, named like a table now
        for statement in _SCHEMA:
            conn.execute(statement)
        if (version is not None and version < 3) or draft:
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
    return _NAMES <= have and "result_views" not in have


def has_flags(conn: sqlite3.Connection) -> bool:
    """The store keeps its results split (layout 3; not its draft, which kept them whole)."""
    return _has_table(conn, "result_flags")


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return found is not None


_MIGRATION_BATCH = 500


def _split_stored_results(conn: sqlite3.Connection) -> None:
    """Version 2 -> 3: rewrite every whole stored result into its parts, in batches of rows
    after the last one done (memory stays bounded; no cursor reads a table being written)."""
    last = 0
    while batch := conn.execute(
        "SELECT r.rowid, r.job_id, r.result, j.spec FROM results r "
        "LEFT JOIN jobs j ON j.job_id = r.job_id WHERE r.rowid > ? AND NOT EXISTS "
        "(SELECT 1 FROM result_flags f WHERE f.job_id = r.job_id) ORDER BY r.rowid LIMIT ?",
        (last, _MIGRATION_BATCH),
    ).fetchall():
        last = batch[-1][0]
        parts = []
        for _rowid, job_id, text, spec in batch:
            try:
                parts.append((job_id, split_result(text, spec)))
            except ValueError:
                # Not a JSON object: kept as it is, with no flags; readers take it whole,
                # as before the migration, and say what is wrong there.
                continue
        conn.executemany(
            "UPDATE results SET result = ? WHERE job_id = ?", [(p.body, j) for j, p in parts]
        )
        write_parts(conn, parts)
