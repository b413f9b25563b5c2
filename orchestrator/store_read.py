"""The store's reading side for reports and `orch status`: a campaign's jobs and results, read
from the layout built for it (orchestrator/store_layout.py).

A report parses each result's view (no telemetry series), gets the series of the few runs it
draws (`JobRow.series`), and `orch status CAMPAIGN` counts in SQL without parsing anything. A
read-only store of an older layout has no views: it is read from its full results, with the
same answers (tests/orchestrator/test_store_layout.py).

Example::

    rows = store.campaign_jobs("halo")
    rows[0].series()["gpu_busy_pct"]      # read from result_series on first use
    store.campaign_progress("halo").finished
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
    split: bool  # the results are split for reading (layout 3)
    _outcome: str

    def campaign_jobs(self, campaign: str) -> list[JobRow]:
        """The campaign's jobs in submission order, with their results (without telemetry
        series: `JobRow.series` reads them), cancellations and predictions."""
        from jobs.result import RunResult
        from jobs.spec import JobSpec

        # A result without a view (written by hand, or unreadable when the store migrated) is
        # read from its full JSON, as every result of an older read-only store is.
        if self.split:
            result, job_is_row = "COALESCE(v.view, r.result)", "COALESCE(v.job_is_row, 0)"
            views = "LEFT JOIN result_views v ON v.job_id = j.job_id "
        else:
            result, job_is_row, views = "r.result", "0", ""
        rows = self.conn.execute(
            f"SELECT j.spec, {result}, {job_is_row}, c.job_id IS NOT NULL, p.kind, "
            "p.needs_bytes, p.text FROM jobs j "
            f"LEFT JOIN results r ON r.job_id = j.job_id {views}"
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
                parsed.job = spec  # left out of the view because it is this row
            prediction = Prediction(kind, needs, words) if kind is not None else None
            out.append(JobRow(spec, parsed, bool(cancelled) and not text, prediction, source))
        return out

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
            loaded, has_requests, disturbed = "v.loaded", "v.has_requests", "v.disturbed"
            # Named: SQLite's planner prefers the primary key, then reads each view's page
            # for its flags (3.6x slower at 100k results).
            flags_index = self.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'result_flags'"
            ).fetchone()
            indexed = "INDEXED BY result_flags " if flags_index else ""
            views = f"LEFT JOIN result_views v {indexed}ON v.job_id = j.job_id "
        else:
            loaded = "json_extract(r.result, '$.load_time_s') IS NOT NULL"
            has_requests = "COALESCE(json_array_length(r.result, '$.requests'), 0) > 0"
            disturbed = "COALESCE(json_extract(r.result, '$.disturbance.disturbed'), 0)"
            views = ""
        jobs = (
            f"FROM jobs j LEFT JOIN {self._outcome} ON r.job_id = j.job_id {views}"
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
