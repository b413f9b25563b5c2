"""`orch compare A B`: two campaigns, or two values of one axis within a campaign, side by side.

Jobs are matched on everything that identifies them (host, engine, model, backend, context,
carve-out, workload) except what is compared; B's cells carry their ratio to A's and a verdict.
`regressions` lists the cells where B is worse than A by more than a threshold *and* the
difference is real (an exact Mann-Whitney U test rejects at 5%), so `--fail-on-regression 5`
can guard an upgrade of a driver or of llama.cpp without failing on noise.

Example::

    pivot = compare_campaigns(store, "before-upgrade", "after-upgrade")
    compare_within(store, "halo", "backend=vulkan", "backend=rocm")
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.result import Status
from orchestrator.errors import OrchError
from orchestrator.report.pivot import (
    AXES,
    CANCELLED,
    WAITING,
    Cell,
    Pivot,
    PivotOptions,
    Record,
    ReportError,
    build_pivot,
    job_axes,
)
from orchestrator.stats import Verdict
from orchestrator.store import JobRow, Store

COMPARED = "compared"


class RegressionError(OrchError):
    """`orch compare --fail-on-regression`: B is slower than A beyond the threshold."""

    exit_code = 1


@dataclass(frozen=True)
class Regression:
    where: str  # row and metric, e.g. "vulkan 8192 tg tokens/s"
    what: str  # "0.912× (8.8% worse)", or "load failed" where the baseline had figures

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def _jobs(store: Store, campaign: str) -> list[JobRow]:
    store.require_campaign(campaign)
    return store.campaign_jobs(campaign)


def compare_campaigns(store: Store, a: str, b: str, options: PivotOptions | None = None) -> Pivot:
    """Campaign B against campaign A (the baseline), configuration by configuration."""
    records = [
        Record({**job_axes(j.spec), COMPARED: side}, j)
        for side in (a, b)
        for j in _jobs(store, side)
    ]
    return _pivot(f"{b} vs {a}", records, a, b, options)


def compare_within(
    store: Store, campaign: str, a: str, b: str, options: PivotOptions | None = None
) -> Pivot:
    """Two values of one axis in one campaign, e.g. `host=laptop-80w` and `host=minipc-120w`."""
    jobs = [(job, job_axes(job.spec)) for job in _jobs(store, campaign)]
    known = [*AXES, *sorted({k for _, axes in jobs for k in axes} - set(AXES))]
    axis, value_a = _selector(a, known)
    axis_b, value_b = _selector(b, known)
    if axis_b != axis:
        raise ReportError(f"compare one axis at a time: {a!r} and {b!r} name different axes")
    records = []
    for job, axes in jobs:
        value = str(axes.get(axis))
        if value in (value_a, value_b):
            axes[axis] = "-"  # matched on everything else
            records.append(Record({**axes, COMPARED: f"{axis}={value}"}, job))
    for wanted in (value_a, value_b):
        if not any(r.axes[COMPARED] == f"{axis}={wanted}" for r in records):
            raise ReportError(f"campaign {campaign!r} has no job with {axis}={wanted}")
    return _pivot(f"{campaign}: {b} vs {a}", records, f"{axis}={value_a}", b, options)


def _selector(text: str, known: list[str]) -> tuple[str, str]:
    """AXIS=VALUE, AXIS any axis the campaign's jobs have (configuration, power_limit_w...)."""
    axis, sep, value = text.partition("=")
    if not sep or axis not in known:
        raise ReportError(
            f"{text!r}: expected AXIS=VALUE with AXIS one of {', '.join(known)} "
            "(e.g. host=laptop-80w)"
        )
    return axis, value


def _pivot(
    title: str, records: list[Record], a: str, b: str, options: PivotOptions | None
) -> Pivot:
    options = options or PivotOptions()
    pivot = build_pivot(
        title,
        [],
        PivotOptions(
            rows=options.rows,
            columns=(COMPARED,),
            metrics=options.metrics,
            baseline=(COMPARED, a),
        ),
        records=records,
    )
    pivot.columns.sort(key=lambda column: column != (a,))  # A, the baseline, on the left
    sides = {row: {column for r, column in pivot.cells if r == row} for row in pivot.rows}
    if not any(len(columns) == 2 for columns in sides.values()):
        raise ReportError(
            f"{b} and {a} have no configuration in common to compare "
            "(same host, engine, model, backend, context, carve-out and workload)"
        )
    return pivot


def regressions(pivot: Pivot, threshold_pct: float) -> list[Regression]:
    """Cells really worse than their baseline by more than `threshold_pct`, and, wherever the
    baseline has figures, B cells that failed (even beside good jobs), have no job, or have no
    result yet: a guard must not pass because B did not run."""
    found = []
    baseline = (pivot.baseline[1],) if pivot.baseline else None
    for row in pivot.rows:
        base = pivot.cell(row, baseline) if baseline else None
        base_has_figures = base is not None and base.stats is not None
        for column in pivot.columns:
            if column == baseline:
                continue
            metric = pivot.metric_of(row, column)
            labels = [str(v) for a, v in zip(pivot.row_axes, row, strict=True) if a != "metric"]
            where = " ".join([*labels, metric.title])
            cell = pivot.cell(row, column)
            if base_has_figures and (missing := _not_measured(cell)):
                found.append(Regression(where, missing))
            if cell is None:
                continue
            found += _worse(cell, where, threshold_pct)
    return found


def _not_measured(cell: Cell | None) -> str | None:
    """Why B has no trustworthy figures here, or None when all its jobs ran fine."""
    if cell is None:
        return "no job in B"
    if cell.failures:
        ok = cell.statuses.count(Status.OK.value)
        return ", ".join(cell.failures) + (f" (beside {ok} ok job(s))" if ok else "")
    pending = [s for s in (WAITING, CANCELLED) if s in cell.statuses]
    if pending:
        return f"{' and '.join(pending)}: no result in B"
    return None


def _worse(cell: Cell, where: str, threshold_pct: float) -> list[Regression]:
    metric, comparison = cell.metric, cell.comparison
    if comparison is None or comparison.ratio is None or metric.regression is None:
        return []
    if comparison.verdict not in (Verdict.UP, Verdict.DOWN):
        return []
    worse = (metric.regression == "up") == (comparison.verdict is Verdict.UP)
    change = abs(comparison.ratio - 1.0) * 100.0
    if worse and change > threshold_pct:
        return [Regression(where, f"{comparison.ratio:.3f}× ({change:.1f}% worse)")]
    return []
