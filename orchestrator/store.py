"""The durable result store on the coordinator (SQLite): the system of record.

Redis only carries results until they are collected; here they stay. Results are upserted by
job id, fenced by attempt, so a re-delivered job never counts twice.

Example::

    store = Store.open(Path("orch.db"))
    store.record_submission(matrix_path, text, campaign, jobs)
    collected = store.collect(redis_client)   # drain orch:results into the store
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from jobs.protocol import REJECTED_KEY, RESULTS_KEY
from jobs.result import RunResult
from jobs.spec import JobSpec
from orchestrator.errors import StoreError

# Version of the SQLite layout. History:
#   1 - campaigns, jobs, results (RunResult JSON) tables.
STORE_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS campaigns (
    campaign TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    matrix_path TEXT,
    matrix_text TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    campaign TEXT NOT NULL,
    host TEXT NOT NULL,
    queue TEXT NOT NULL,
    spec TEXT NOT NULL,
    submitted_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_campaign ON jobs (campaign);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT PRIMARY KEY,
    campaign TEXT NOT NULL,
    host TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    result TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    collected_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_campaign ON results (campaign);
"""


def default_store_path() -> Path:
    """`$ORCH_STORE`, else `$XDG_DATA_HOME/orch/orch.db` (`~/.local/share/orch/orch.db`)."""
    if os.environ.get("ORCH_STORE"):
        return Path(os.environ["ORCH_STORE"])
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "orch" / "orch.db"


@dataclass(frozen=True)
class JobRow:
    """A submitted job and its result, when one has been collected."""

    spec: JobSpec
    result: RunResult | None


@dataclass(frozen=True)
class CampaignSummary:
    campaign: str
    created_at: str
    total: int
    finished: int
    ok: int


class Store:
    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Store:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('version', ?)", (str(STORE_VERSION),))
            elif int(row[0]) > STORE_VERSION:
                raise StoreError(
                    f"{path} was written by a newer orch (store version {row[0]}); upgrade orch"
                )
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the result store {path}: {exc}") from exc
        return cls(conn, path)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- submissions -------------------------------------------------------------------------

    def known_job_ids(self, job_ids: list[str]) -> set[str]:
        known: set[str] = set()
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(f"SELECT job_id FROM jobs WHERE job_id IN ({marks})", chunk)
            known.update(r[0] for r in rows)
        return known

    def record_campaign(self, campaign: str, matrix_path: str, matrix_text: str) -> None:
        now = _now()
        self.conn.execute(
            "INSERT INTO campaigns VALUES (?, ?, ?, ?, ?) ON CONFLICT(campaign) DO UPDATE SET "
            "updated_at=excluded.updated_at, matrix_path=excluded.matrix_path, "
            "matrix_text=excluded.matrix_text",
            (campaign, now, now, matrix_path, matrix_text),
        )

    def record_job(self, job: JobSpec) -> None:
        # A result may bring a job this store never submitted (another coordinator did):
        # give it a campaign row so that `orch report` finds it.
        now = _now()
        self.conn.execute(
            "INSERT OR IGNORE INTO campaigns VALUES (?, ?, ?, NULL, NULL)",
            (job.campaign, now, now),
        )
        self.conn.execute(
            "INSERT OR IGNORE INTO jobs VALUES (?, ?, ?, ?, ?, ?)",
            (job.job_id, job.campaign, job.host, job.queue, job.model_dump_json(), _now()),
        )

    # -- results -----------------------------------------------------------------------------

    def upsert_result(self, result: RunResult) -> bool:
        """Insert or replace by job id; a later attempt wins, an equal or older one is ignored."""
        cur = self.conn.execute(
            "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET "
            "status=excluded.status, attempt=excluded.attempt, result=excluded.result, "
            "finished_at=excluded.finished_at, collected_at=excluded.collected_at "
            "WHERE excluded.attempt > results.attempt",
            (
                result.job_id,
                result.campaign,
                result.host,
                result.status.value,
                result.attempt,
                result.model_dump_json(),
                result.finished_at.isoformat(),
                _now(),
            ),
        )
        return cur.rowcount > 0

    def collect(self, redis: Any) -> int:
        """Move finished results from the broker's outbox into this store; return how many.

        Each result is committed here before it is removed there, and the upsert is idempotent,
        so a crash in between only means the same result is seen (and ignored) next time. An
        entry this orch cannot read (a newer worker's schema, say) is set aside in
        `orch:results:rejected`, kept for a newer coordinator, instead of blocking the rest.
        """
        collected = 0
        for raw in redis.lrange(RESULTS_KEY, 0, -1):
            try:
                result = RunResult.model_validate_json(raw)
            except ValidationError:
                pipe = redis.pipeline(transaction=True)
                pipe.rpush(REJECTED_KEY, raw)
                pipe.lrem(RESULTS_KEY, 1, raw)
                pipe.execute()
                continue
            if result.job is not None:
                self.record_job(result.job)
            if self.upsert_result(result):
                collected += 1
            redis.lrem(RESULTS_KEY, 1, raw)
        return collected

    # -- reading -----------------------------------------------------------------------------

    def campaign_jobs(self, campaign: str) -> list[JobRow]:
        rows = self.conn.execute(
            "SELECT j.spec, r.result FROM jobs j LEFT JOIN results r ON r.job_id = j.job_id "
            "WHERE j.campaign = ? ORDER BY j.rowid",
            (campaign,),
        )
        return [
            JobRow(
                JobSpec.model_validate_json(spec),
                RunResult.model_validate_json(result) if result else None,
            )
            for spec, result in rows
        ]

    def campaigns(self) -> list[CampaignSummary]:
        rows = self.conn.execute(
            "SELECT c.campaign, c.created_at, COUNT(j.job_id), COUNT(r.job_id), "
            "COALESCE(SUM(r.status = 'ok'), 0) FROM campaigns c "
            "LEFT JOIN jobs j ON j.campaign = c.campaign "
            "LEFT JOIN results r ON r.job_id = j.job_id "
            "GROUP BY c.campaign ORDER BY c.created_at"
        )
        return [CampaignSummary(*row) for row in rows]

    def has_campaign(self, campaign: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM campaigns WHERE campaign = ?", (campaign,))
        return row.fetchone() is not None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
