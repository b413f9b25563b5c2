"""`orch compare A B`: two campaigns, or two values of some axes within a campaign, side by side.

Jobs are matched on everything that identifies them (host, engine, model, backend, context,
carve-out, workload...) except what is compared and what the user ignores (`--ignore
vram_split`, for two boxes each in its own carve-out; see `orchestrator.report.matching`);
B's cells carry their ratio to A's and a verdict, and a line under the title says what was
matched and what the ignored axes held. `regressions` lists the cells where B is worse than A
by more than a threshold *and* the difference is real (an exact Mann-Whitney U test rejects at
5%), so `--fail-on-regression 5` can guard an upgrade of a driver or of llama.cpp without
failing on noise.

Example::

    pivot = compare_campaigns(store, "before-upgrade", "after-upgrade")
    compare_within(store, "halo", "backend=vulkan", "backend=rocm")
    compare_within(store, "fleet", "host=laptop-80w", "host=minipc-120w", ignore=("vram_split",))
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.result import Status
from orchestrator.errors import OrchError
from orchestrator.report.matching import COMPARED, Side, known_axes, match, split_pairs
from orchestrator.report.pivot import (
    CANCELLED,
    WAITING,
    Cell,
    Pivot,
    PivotOptions,
    ReportError,
    build_pivot,
    campaign_axes,
)
from orchestrator.stats import Verdict
from orchestrator.store import JobRow, Store

__all__ = ["COMPARED", "Regression", "RegressionError", "compare_campaigns", "compare_within",
           "regressions"]  # fmt: skip


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
    jobs = store.campaign_jobs(campaign)
    if not jobs:
        raise ReportError(f"campaign {campaign!r} has no jobs to compare")
    return jobs


def compare_campaigns(
    store: Store,
    a: str,
    b: str,
    options: PivotOptions | None = None,
    ignore: tuple[str, ...] = (),
) -> Pivot:
    """Campaign B against campaign A (the baseline), configuration by configuration."""
    both = {c: _jobs(store, c) for c in (a, b)}
    axes = iter(campaign_axes([j.spec for c in (a, b) for j in both[c]]))
    sides = [Side(c, [(j, next(axes)) for j in both[c]]) for c in (a, b)]
    return _pivot(f"{b} vs {a}", sides[0], sides[1], (), options, ignore)


def compare_within(
    store: Store,
    campaign: str,
    a: str,
    b: str,
    options: PivotOptions | None = None,
    ignore: tuple[str, ...] = (),
) -> Pivot:
    """Two values of some axes in one campaign: `host=laptop-80w` and `host=minipc-120w`, or
    `host=laptop-80w,vram_split=512M` and `host=minipc-120w,vram_split=32G`."""
    rows = _jobs(store, campaign)
    jobs = list(zip(rows, campaign_axes([job.spec for job in rows]), strict=True))
    known = known_axes(axes for _, axes in jobs)
    want_a, want_b = _selector(a, known), _selector(b, known)
    if set(want_a) != set(want_b):
        raise ReportError(
            f"compare the same axes on both sides: {a!r} names {', '.join(want_a)}, "
            f"{b!r} names {', '.join(want_b)}"
        )
    if want_a == want_b:
        raise ReportError(f"A and B are the same ({a!r}): nothing to compare")
    sides = []
    for wanted in (want_a, want_b):
        label = ",".join(f"{axis}={value}" for axis, value in wanted.items())
        picked = [(j, x) for j, x in jobs if all(str(x.get(k)) == v for k, v in wanted.items())]
        if not picked:
            raise ReportError(f"campaign {campaign!r} has no job with {label}")
        sides.append(Side(label, picked))
    title = f"{campaign}: {sides[1].label} vs {sides[0].label}"
    return _pivot(title, sides[0], sides[1], tuple(want_a), options, ignore)


def _selector(text: str, known: list[str]) -> dict[str, str]:
    """AXIS=VALUE[,AXIS=VALUE...], AXIS any axis the campaign's jobs have (configuration,
    power_limit_w...)."""
    wanted: dict[str, str] = {}
    for part in split_pairs(text):
        axis, sep, value = part.strip().partition("=")
        if not sep or axis not in known or axis in wanted:
            raise ReportError(
                f"{text!r}: expected AXIS=VALUE[,AXIS=VALUE...] with AXIS one of "
                f"{', '.join(known)}, each once (e.g. host=laptop-80w or "
                "host=laptop-80w,vram_split=512M)"
            )
        wanted[axis] = value
    return wanted


def _pivot(
    title: str,
    a: Side,
    b: Side,
    compared: tuple[str, ...],
    options: PivotOptions | None,
    ignore: tuple[str, ...],
) -> Pivot:
    options = options or PivotOptions()
    matched = match(a, b, compared, ignore)
    hidden = [x for x in (options.rows or ()) if x in (*compared, *ignore)]
    if hidden:
        why = "compared" if hidden[0] in compared else "ignored"
        raise ReportError(f"--rows {hidden[0]}: {hidden[0]} is {why}, so no row has a value of it")
    pivot = build_pivot(
        title,
        [],
        PivotOptions(
            rows=options.rows,
            columns=(COMPARED,),
            metrics=options.metrics,
            baseline=(COMPARED, a.label),
        ),
        records=matched.records,
    )
    pivot.columns.sort(key=lambda column: column != (a.label,))  # A, the baseline, on the left
    pivot.subtitle[:0] = matched.summary
    return pivot


def regressions(pivot: Pivot, threshold_pct: float) -> list[Regression]:
    """Cells really worse than their baseline by more than `threshold_pct`; cells that cannot
    be judged because a side's runs were disturbed; and, wherever the baseline has figures, B
    cells that failed (even beside good jobs), have no job, or have no result yet: a guard must
    not pass because B did not run, or ran on a busy box."""
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
    if comparison is None or metric.regression is None:
        return []
    ratio = "from 0" if comparison.ratio is None else f"{comparison.ratio:.3f}×"
    if comparison.verdict is Verdict.DISTURBED:
        # No verdict is drawn from a disturbed run, and a guard must not pass on what it could
        # not judge (a slowed A hides B's regression as well as a slowed B fakes one).
        return [Regression(where, f"not judged: disturbed runs ({ratio})")]
    if comparison.verdict not in (Verdict.UP, Verdict.DOWN):
        return []
    worse = (metric.regression == "up") == (comparison.verdict is Verdict.UP)
    if comparison.ratio is None:
        # From a baseline of 0 (no failed request in A) no ratio exists, but the exact test
        # still says B differs: a rise is a regression whatever the threshold.
        if not worse or cell.stats is None:
            return []
        return [Regression(where, f"from 0 to {cell.stats.median:g} (worse)")]
    change = abs(comparison.ratio - 1.0) * 100.0
    if worse and change > threshold_pct:
        return [Regression(where, f"{comparison.ratio:.3f}× ({change:.1f}% worse)")]
    return []
