"""The durable result store on the coordinator (SQLite): the system of record.

Workers append results to a Redis stream; each store reads it from its own cursor (kept here,
per broker), so several coordinators can each keep a full copy and none takes results away
from another. Results are upserted by job id, each job keeping the one that is final by the
order of jobs/finality.py, so a re-delivered job never counts twice and every store that reads
the stream ends with the same final results.

The layout (tables, version, migrations) is orchestrator/store_layout.py: each result is kept
split for reading, every byte once; the reading side for reports and `orch status` is
orchestrator/store_read.py (`stored_result` puts a result back together).

Example::

    store = Store.open(Path("orch.db"))
    store.record_submission(matrix_path, text, campaign, jobs)
    collected = store.collect(redis_client)   # drain orch:results into the store
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import StoreError
from orchestrator.store_layout import (
    STORE_VERSION,
    has_flags,
    open_layout,
    refuse_newer,
    split_result,
    stored_version,
    write_parts,
)
from orchestrator.store_read import CampaignProgress, JobRow, Prediction, StoreReader
from orchestrator.storeerrors import connect_store, open_read_only

# The job and result models (pydantic) are imported by the methods that parse them: `orch
# status` and `orch campaigns` open the store and only count (tests/orchestrator/
# test_cli_startup.py).
if TYPE_CHECKING:
    from jobs.result import RunResult
    from jobs.spec import JobSpec

__all__ = [
    "STORE_VERSION", "CampaignOverview", "CampaignProgress", "JobRow", "Prediction", "Store",
    "default_store_path",
]  # fmt: skip

_BATCH = 500
_REJECTED_HEAD = 4096  # bytes of an oversized stream entry kept to show what it was


def default_store_path() -> Path:
    """`$ORCH_STORE`, else `$XDG_DATA_HOME/orch/orch.db` (`~/.local/share/orch/orch.db`)."""
    if os.environ.get("ORCH_STORE"):
        return Path(os.environ["ORCH_STORE"])
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "orch" / "orch.db"


@dataclass(frozen=True)
class CampaignOverview:
    """A campaign's history line for `orch campaigns`."""

    campaign: str
    created_at: str
    updated_at: str
    last_result_at: str | None
    hosts: tuple[str, ...]
    total: int
    finished: int  # jobs with a result, whatever its status
    ok: int
    skipped: int  # never run: predicted not to load
    cancelled: int  # taken out of their queue, no result

    @property
    def failed(self) -> int:
        return self.finished - self.ok - self.skipped

    @property
    def waiting(self) -> int:
        return self.total - self.finished - self.cancelled


class Store(StoreReader):
    def __init__(self, conn: sqlite3.Connection, path: Path, read_only: bool = False) -> None:
        self.conn = conn
        self.path = path
        # A store on a read-only file or folder (a copy, a backup): readable, never written.
        self.read_only = read_only
        self._durations: tuple[tuple[Any, ...], dict[str, list[float]]] | None = None
        # The upsert asks jobs/finality.py, inside its one statement, which result is final.
        conn.create_function("orch_supersedes", 2, _supersedes_json, deterministic=True)
        # Counting queries name the covering index: SQLite's planner prefers the primary key and
        # then reads each result's overflow pages for finished_at (3x slower at 10k results).
        # A read-only copy made before the index existed has none: plain joins there.
        has_index = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'results_outcome'"
        ).fetchone()
        self._outcome = "results r INDEXED BY results_outcome" if has_index else "results r"
        # Results split for reading (layout 3); a read-only store of an older layout (or of
        # layout 3's unreleased draft) has whole results. One of a newer layout is not read at
        # all: its tables may mean something else.
        version = stored_version(conn)
        refuse_newer(path, version)
        self.split = version is not None and version >= 3 and has_flags(conn)

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating or migrating: orchestrator/store_layout.py) the store at `path`.

        A store on a read-only file or folder is opened as it is, never migrated: one of an
        older layout is read from its full results (slower, the same answers).
        """
        if path.is_file() and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
            conn = open_read_only(path)
            try:
                return cls(conn, path, read_only=True)
            except StoreError:
                conn.close()
                raise
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = connect_store(path)
            conn.execute("PRAGMA journal_mode=WAL")
            open_layout(conn, path)
        except StoreError:
            raise
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
            if self.conn.in_transaction:  # SQLite rolls back by itself on a full disk
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- submissions -------------------------------------------------------------------------

    def known_job_ids(self, job_ids: list[str]) -> set[str]:
        return self._ids_in("jobs", job_ids)

    def finished_job_ids(self, job_ids: list[str]) -> set[str]:
        return self._ids_in("results", job_ids)

    def skipped_job_ids(self, job_ids: list[str]) -> set[str]:
        """Jobs whose result is the coordinator's own `skipped` (never ran)."""
        return self._ids_in("results", job_ids, "status = 'skipped'")

    def _ids_in(self, table: str, job_ids: list[str], where: str = "1") -> set[str]:
        found: set[str] = set()
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f"SELECT job_id FROM {table} WHERE job_id IN ({marks}) AND {where}", chunk
            )
            found.update(r[0] for r in rows)
        return found

    def record_campaign(self, campaign: str, matrix_path: str, matrix_text: str) -> None:
        now = _now()
        self.conn.execute(
            "INSERT INTO campaigns VALUES (?, ?, ?, ?, ?) ON CONFLICT(campaign) DO UPDATE SET "
            "updated_at=excluded.updated_at, matrix_path=excluded.matrix_path, "
            "matrix_text=excluded.matrix_text",
            (campaign, now, now, matrix_path, matrix_text),
        )

    def record_job(self, job: JobSpec) -> None:
        self.conn.execute("DELETE FROM cancelled WHERE job_id = ?", (job.job_id,))
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

    def record_jobs(self, jobs: Sequence[JobSpec], forget_results: Collection[str] = ()) -> None:
        """`record_job` for each of `jobs`, in one transaction (a submission writes a batch of
        jobs at once: one commit each would cost more than publishing them); the results of
        the jobs in `forget_results` go in the same transaction (see `forget_result`)."""
        now = _now()
        with self.transaction():
            self.conn.executemany(
                "DELETE FROM cancelled WHERE job_id = ?", [(job.job_id,) for job in jobs]
            )
            self.conn.executemany(
                "DELETE FROM results WHERE job_id = ?",
                [(job.job_id,) for job in jobs if job.job_id in forget_results],
            )
            self.conn.executemany(
                "INSERT OR IGNORE INTO campaigns VALUES (?, ?, ?, NULL, NULL)",
                [(campaign, now, now) for campaign in dict.fromkeys(j.campaign for j in jobs)],
            )
            self.conn.executemany(
                "INSERT OR IGNORE INTO jobs VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (job.job_id, job.campaign, job.host, job.queue, job.model_dump_json(), now)
                    for job in jobs
                ],
            )

    def record_predictions(self, predictions: Iterable[tuple[str, Prediction]]) -> None:
        """`record_prediction` for each (job id, prediction), in one transaction."""
        now = _now()
        with self.transaction():
            self.conn.executemany(
                "INSERT INTO predictions VALUES (?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET "
                "kind=excluded.kind, needs_bytes=excluded.needs_bytes, text=excluded.text, "
                "predicted_at=excluded.predicted_at",
                [(job_id, p.kind, p.needs_bytes, p.text, now) for job_id, p in predictions],
            )

    def record_prediction(self, job_id: str, prediction: Prediction) -> None:
        self.conn.execute(
            "INSERT INTO predictions VALUES (?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET "
            "kind=excluded.kind, needs_bytes=excluded.needs_bytes, text=excluded.text, "
            "predicted_at=excluded.predicted_at",
            (job_id, prediction.kind, prediction.needs_bytes, prediction.text, _now()),
        )

    # -- results -----------------------------------------------------------------------------

    def upsert_result(self, result: RunResult) -> bool:
        """Keep `result` if it supersedes the job's stored one (jobs/finality.py: attempt, then
        lease generation, then status), as every store reading the stream does, so they all
        converge; a result made by the wrong box is never kept."""
        from jobs.finality import eligible

        if not eligible(result):
            return False
        text = result.model_dump_json()
        # The result and its parts for reading change together, in or out of a transaction.
        self.conn.execute("SAVEPOINT upsert_result")
        try:
            kept = self._upsert(result, text)
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK TO upsert_result")
                self.conn.execute("RELEASE upsert_result")
            raise
        self.conn.execute("RELEASE upsert_result")
        return kept

    def _upsert(self, result: RunResult, text: str) -> bool:
        row = self.conn.execute(
            "SELECT spec FROM jobs WHERE job_id = ?", (result.job_id,)
        ).fetchone()
        parts = split_result(text, row[0] if row else None)
        cur = self.conn.execute(
            "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET "
            "status=excluded.status, attempt=excluded.attempt, result=excluded.result, "
            "finished_at=excluded.finished_at, collected_at=excluded.collected_at "
            "WHERE orch_supersedes(excluded.result, results.result)",
            (
                result.job_id,
                result.campaign,
                result.host,
                result.status.value,
                result.attempt,
                parts.body,
                result.finished_at.isoformat(),
                _now(),
            ),
        )
        if cur.rowcount == 0:
            return False
        write_parts(self.conn, [(result.job_id, parts)])
        return True

    def forget_result(self, job_id: str) -> None:
        """Drop a job's result (a retry will record a new one, with a higher attempt)."""
        self.conn.execute("DELETE FROM results WHERE job_id = ?", (job_id,))

    def collect(self, redis: Any) -> int:
        """Read results this store has not seen from the broker's stream; return how many.

        The cursor advances in the same SQLite transaction as the upserts, so a crash never
        skips a result. An entry this orch cannot read (a newer worker's schema, say) is kept
        in `rejected` and read again by every later collect, so an upgrade picks it up. Each
        committed batch is then acknowledged to the boxes, which keep a result until a store
        has it (orchestrator/acks.py).
        """
        from pydantic import ValidationError

        from jobs.acks import broker_id as broker_id_of
        from jobs.protocol import RESULTS_KEY
        from jobs.result import RunResult, oversized
        from orchestrator.acks import StoreAcks

        broker_id = broker_id_of(redis)  # the rule the boxes use too (jobs/acks.py)
        cursor_key = f"cursor:{broker_id}"
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (cursor_key,)).fetchone()
        cursor = row[0] if row else "0-0"
        acks = StoreAcks(self.conn, redis, broker_id)
        acks.catch_up(cursor)
        collected = self._retry_rejected()
        while True:
            entries = redis.xrange(RESULTS_KEY, min=f"({cursor}", count=_BATCH)
            if not entries:
                return collected
            with self.transaction():
                for entry_id, fields in entries:
                    raw = fields.get(b"result", b"")
                    too_big = oversized(raw)
                    if too_big is not None:  # kept aside as its head: never parsed, never stored
                        head = raw[:_REJECTED_HEAD].decode(errors="replace")
                        self.conn.execute(
                            "INSERT OR IGNORE INTO rejected VALUES (?, ?, ?, ?)",
                            (broker_id, _text(entry_id), head, too_big),
                        )
                        continue
                    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
                    try:
                        result = RunResult.model_validate_json(text)
                    except ValidationError as exc:
                        self.conn.execute(
                            "INSERT OR IGNORE INTO rejected VALUES (?, ?, ?, ?)",
                            (broker_id, _text(entry_id), text, str(exc).splitlines()[0]),
                        )
                        continue
                    collected += self._record(result)
                cursor = _text(entries[-1][0])
                self.conn.execute(
                    "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                    "excluded.value",
                    (cursor_key, cursor),
                )
            acks.acknowledge(entries)

    def _record(self, result: RunResult) -> int:
        if result.job is not None:
            self.record_job(result.job)
        return 1 if self.upsert_result(result) else 0

    def _retry_rejected(self) -> int:
        from pydantic import ValidationError

        from jobs.result import RunResult

        collected = 0
        for broker_id, entry_id, raw in self.conn.execute(
            "SELECT broker_id, entry_id, raw FROM rejected"
        ).fetchall():
            try:
                result = RunResult.model_validate_json(raw)
            except ValidationError:
                continue
            with self.transaction():
                collected += self._record(result)
                self.conn.execute(
                    "DELETE FROM rejected WHERE broker_id = ? AND entry_id = ?",
                    (broker_id, entry_id),
                )
        return collected

    def rejected_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM rejected").fetchone()[0])

    # -- reading -----------------------------------------------------------------------------

    def done_by_queue(self) -> dict[str, int]:
        """Jobs with a result (that ran: skipped ones did not) per queue, all campaigns."""
        rows = self.conn.execute(
            f"SELECT j.queue, COUNT(*) FROM {self._outcome} JOIN jobs j ON j.job_id = r.job_id "
            "WHERE r.status != 'skipped' GROUP BY j.queue"
        )
        return {queue: int(count) for queue, count in rows}

    def config_names_by_queue(self) -> dict[str, list[str]]:
        """The matrix's configuration names that route to each queue (all campaigns)."""
        rows = self.conn.execute(
            "SELECT DISTINCT queue, json_extract(spec, '$.config_name') FROM jobs "
            "WHERE json_extract(spec, '$.config_name') IS NOT NULL ORDER BY 2"
        )
        out: dict[str, list[str]] = {}
        for queue, name in rows:
            out.setdefault(queue, []).append(name)
        return out

    def pending_jobs(self, campaign: str | None = None) -> list[JobSpec]:
        """Every submitted job with no result that was not cancelled (of all campaigns, or
        of `campaign`)."""
        from jobs.spec import JobSpec

        rows = self.conn.execute(
            "SELECT j.spec FROM jobs j LEFT JOIN results r ON r.job_id = j.job_id "
            "LEFT JOIN cancelled c ON c.job_id = j.job_id "
            "WHERE r.job_id IS NULL AND c.job_id IS NULL AND (?1 IS NULL OR j.campaign = ?1) "
            "ORDER BY j.rowid",
            (campaign,),
        )
        return [JobSpec.model_validate_json(spec) for (spec,) in rows]

    @staticmethod
    def shape_key(job: JobSpec) -> str:
        """What makes two jobs the same run, campaign aside (for durations across campaigns)."""
        body = job.model_dump(mode="json", exclude={"job_id", "schema_version", "campaign"})
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def durations(self) -> dict[str, list[float]]:
        """Wall seconds of every successful run, by `shape_key` of its job. Kept until a result
        arrives or goes (`orch status --watch` asks on every refresh; each call parses every
        successful job's spec)."""
        from jobs.spec import JobSpec

        key = self.conn.execute(
            "SELECT COUNT(*), MAX(rowid), MAX(collected_at) FROM results WHERE status = 'ok'"
        ).fetchone()
        if self._durations is not None and self._durations[0] == tuple(key):
            return self._durations[1]
        rows = self.conn.execute(
            "SELECT j.spec, json_extract(r.result, '$.started_at'), "
            "json_extract(r.result, '$.finished_at') FROM results r "
            "JOIN jobs j ON j.job_id = r.job_id WHERE r.status = 'ok'"
        )
        out: dict[str, list[float]] = {}
        for spec, started, finished in rows:
            seconds = (
                datetime.fromisoformat(finished) - datetime.fromisoformat(started)
            ).total_seconds()
            out.setdefault(self.shape_key(JobSpec.model_validate_json(spec)), []).append(seconds)
        self._durations = (tuple(key), out)
        return out

    def mark_cancelled(self, job_ids: list[str]) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO cancelled VALUES (?, ?)", [(j, _now()) for j in job_ids]
        )

    def has_campaign(self, campaign: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM campaigns WHERE campaign = ?", (campaign,))
        return row.fetchone() is not None

    def require_campaign(self, campaign: str) -> None:
        """StoreError, naming the campaigns this store knows, when `campaign` is not one."""
        if not self.has_campaign(campaign):
            rows = self.conn.execute("SELECT campaign FROM campaigns ORDER BY created_at, rowid")
            names = [name for (name,) in rows]
            known = ", ".join(names) or "none yet"
            raise StoreError(f"no campaign {campaign!r} in {self.path} (campaigns: {known})")

    def cancelled_job_ids(self, job_ids: list[str]) -> set[str]:
        return self._ids_in("cancelled", job_ids)

    def campaign_overview(self) -> list[CampaignOverview]:
        """Every campaign with its dates, hosts and job counts, oldest first."""
        rows = self.conn.execute(
            "SELECT c.campaign, c.created_at, c.updated_at, MAX(r.finished_at), "
            "GROUP_CONCAT(DISTINCT j.host), COUNT(j.job_id), COUNT(r.job_id), "
            "COALESCE(SUM(r.status = 'ok'), 0), COALESCE(SUM(r.status = 'skipped'), 0), "
            "COALESCE(SUM(x.job_id IS NOT NULL AND r.job_id IS NULL), 0) FROM campaigns c "
            "LEFT JOIN jobs j ON j.campaign = c.campaign "
            f"LEFT JOIN {self._outcome} ON r.job_id = j.job_id "
            "LEFT JOIN cancelled x ON x.job_id = j.job_id "
            "GROUP BY c.campaign ORDER BY c.created_at, c.campaign"
        )
        return [
            CampaignOverview(
                name,
                created,
                updated,
                last,
                tuple(sorted((hosts or "").split(",") if hosts else [])),
                total,
                finished,
                ok,
                skipped,
                cancelled,
            )
            for name, created, updated, last, hosts, total, finished, ok, skipped, cancelled in rows
        ]


def _supersedes_json(new: str, old: str) -> bool:
    """jobs.finality.supersedes on two stored results (an unreadable old one is replaced).

    Stored results lack their series and maybe their job spec: the order reads neither, and
    both were eligible (by `upsert_result`) when their job spec was left out."""
    from pydantic import ValidationError

    from jobs.finality import supersedes
    from jobs.result import RunResult

    try:
        previous: RunResult | None = RunResult.model_validate_json(old)
    except ValidationError:
        previous = None
    return supersedes(RunResult.model_validate_json(new), previous)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
