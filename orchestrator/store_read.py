"""The store's reading side for reports and `orch status`: a campaign's jobs and results, read
from the layout built for it (orchestrator/store_layout.py).

A report parses each stored result (without its telemetry series), gets the series of the few
runs it draws (`JobRow.series`), and `orch status CAMPAIGN` counts in SQL without parsing
anything. `stored_result` puts a whole result back together. A read-only store of an older
layout keeps whole results: it is read from them, with the same answers
(tests/orchestrator/test_store_layout.py).

Example::

    rows = store.campaign_jobs("halo")
    rows[0].series()["gpu_busy_pct"]      # read from result_series on first use
    store.campaign_progress("halo").finished
    store.stored_result(job_id)           # the RunResult as the worker sent it
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobs.result import RunResult
    from jobs.spec import JobSpec

Series = dict[str, list[float | None]]

WAITING, CANCELLED = "waiting", "cancelled"


@dataclass(frozen=True)
class Prediction:
    """The planner's verdict for a job when it was submitted."""

    kind: str  # "fits", "spills", "will not load", "unknown"
    needs_bytes: int
    text: str  # as `orch plan` shows it


@dataclass(frozen=True)
class JobRow:
    """A submitted job and its result, when one has been collected."""

    spec: JobSpec
    result: RunResult | None
    cancelled: bool = False  # taken out of its queue by `orch cancel` before it ran
    prediction: Prediction | None = None
    # Where the result's telemetry series are kept apart (the store's; None: in the result).
    series_source: Callable[[str], Series] | None = field(default=None, compare=False, repr=False)

    @property
    def settled(self) -> bool:
        """Nothing more will happen to it unless the user re-submits."""
        return self.result is not None or self.cancelled

    def series(self) -> Series:
        """The result's telemetry series (for charts), read from the store on first use."""
        telemetry = self.result.telemetry if self.result is not None else None
        if telemetry is None:
            return {}
        if not telemetry.series and self.series_source is not None:
            telemetry.series = self.series_source(self.spec.job_id)
        return telemetry.series


@dataclass(frozen=True)
class CampaignProgress:
    """What `orch status CAMPAIGN` counts."""

    total: int
    finished: int  # jobs with a result
    by_queue: dict[str, dict[str, int]]  # queue -> state (a status, waiting, cancelled) -> jobs
    loads: int  # results that loaded the model
    load_groups: int  # groups of server jobs (JobSpec.load_group) that could share one load
    disturbed: int


class StoreReader:
    """The reading methods of `orchestrator.store.Store` (mixed in)."""

    conn: sqlite3.Connection
    split: bool  # the results are stored split (layout 3)
    _outcome: str

    def campaign_jobs(self, campaign: str) -> list[JobRow]:
        """The campaign's jobs in submission order, with their results (without telemetry
        series: `JobRow.series` reads them), cancellations and predictions."""
        from jobs.result import RunResult
        from jobs.spec import JobSpec

        job_is_row, flags = self._job_is_row()
        rows = self.conn.execute(
            f"SELECT j.spec, r.result, {job_is_row}, c.job_id IS NOT NULL, p.kind, "
            "p.needs_bytes, p.text FROM jobs j "
            f"LEFT JOIN results r ON r.job_id = j.job_id {flags}"
            "LEFT JOIN cancelled c ON c.job_id = j.job_id "
            "LEFT JOIN predictions p ON p.job_id = j.job_id "
            "WHERE j.campaign = ? ORDER BY j.rowid",
            (campaign,),
        )
        source = self.series_of if self.split else None
        out = []
        for spec_text, text, same_job, cancelled, kind, needs, words in rows:
            spec = JobSpec.model_validate_json(spec_text)
            parsed = RunResult.model_validate_json(text) if text else None
            if parsed is not None and same_job:
                parsed.job = spec  # left out of the stored result because it is this row
            prediction = Prediction(kind, needs, words) if kind is not None else None
            out.append(JobRow(spec, parsed, bool(cancelled) and not text, prediction, source))
        return out

    def campaign_job_ids(self, campaign: str) -> list[str]:
        """The ids of `campaign`'s jobs, in id order."""
        rows = self.conn.execute(
            "SELECT job_id FROM jobs WHERE campaign = ? ORDER BY job_id", (campaign,)
        )
        return [str(row[0]) for row in rows]

    def stored_result(self, job_id: str) -> RunResult | None:
        """The job's stored result put back together (its job spec and telemetry series
        included): equal to the RunResult the store was given. None: the job has none."""
        from jobs.result import RunResult
        from jobs.spec import JobSpec

        job_is_row, flags = self._job_is_row()
        row = self.conn.execute(
            f"SELECT r.result, {job_is_row}, j.spec FROM results r {flags}"
            "LEFT JOIN jobs j ON j.job_id = r.job_id WHERE r.job_id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        text, same_job, spec = row
        result = RunResult.model_validate_json(text)
        if same_job:
            result.job = JobSpec.model_validate_json(spec)
        if self.split and result.telemetry is not None and not result.telemetry.series:
            result.telemetry.series = self.series_of(job_id)
        return result

    def _job_is_row(self) -> tuple[str, str]:
        """SQL for "the stored result left out its job spec" and the join it needs (`r`: the
        results). A result without flags (written by hand, or unreadable when the store
        migrated) is read whole, as every result of an older read-only store is."""
        if not self.split:
            return "0", ""
        return "COALESCE(f.job_is_row, 0)", "LEFT JOIN result_flags f ON f.job_id = r.job_id "

    def series_of(self, job_id: str) -> Series:
        """A result's telemetry series, as kept apart ({} when it has none)."""
        from pydantic import TypeAdapter

        row = self.conn.execute(
            "SELECT series FROM result_series WHERE job_id = ?", (job_id,)
        ).fetchone()
        return TypeAdapter(Series).validate_json(row[0]) if row else {}

    def campaign_progress(self, campaign: str) -> CampaignProgress:
        """The counts of `orch status CAMPAIGN`, in SQL: no result is parsed (a store of an
        older layout, read-only, reads the flags from the full results instead)."""
        if self.split:
            loaded, has_requests, disturbed = "f.loaded", "f.has_requests", "f.disturbed"
            flags = "LEFT JOIN result_flags f ON f.job_id = j.job_id "
        else:
            loaded = "json_extract(r.result, '$.load_time_s') IS NOT NULL"
            has_requests = "COALESCE(json_array_length(r.result, '$.requests'), 0) > 0"
            disturbed = "COALESCE(json_extract(r.result, '$.disturbance.disturbed'), 0)"
            flags = ""
        jobs = (
            f"FROM jobs j LEFT JOIN {self._outcome} ON r.job_id = j.job_id {flags}"
            "LEFT JOIN cancelled c ON c.job_id = j.job_id WHERE j.campaign = ?"
        )
        by_queue: dict[str, dict[str, int]] = {}
        rows = self.conn.execute(
            f"SELECT j.queue, CASE WHEN r.job_id IS NOT NULL THEN r.status WHEN c.job_id IS NOT "
            f"NULL THEN '{CANCELLED}' ELSE '{WAITING}' END AS state, COUNT(*), MIN(j.rowid) "
            f"{jobs} GROUP BY j.queue, state ORDER BY 4",
            (campaign,),
        )
        for queue, state, count, _ in rows:
            by_queue.setdefault(queue, {})[state] = int(count)
        total, finished, loads, disturbed_jobs = self.conn.execute(
            f"SELECT COUNT(*), COUNT(r.job_id), COALESCE(SUM(r.job_id IS NOT NULL AND {loaded}), "
            f"0), COALESCE(SUM(r.job_id IS NOT NULL AND {disturbed}), 0) {jobs}",
            (campaign,),
        ).fetchone()
        # JobSpec.load_group of the server jobs with a result, read from the spec's JSON (one
        # json_extract of all five paths parses each spec once, as a JSON array).
        (groups,) = self.conn.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT j.queue, json_extract(j.spec, '$.engine', "
            "'$.model', '$.backend', '$.context', '$.gpu_layers') "
            f"{jobs} AND r.job_id IS NOT NULL AND {has_requests})",
            (campaign,),
        ).fetchone()
        return CampaignProgress(
            int(total), int(finished), by_queue, int(loads), int(groups), int(disturbed_jobs)
        )
