"""Pivot a campaign's jobs into cells: any axes as rows, any as columns, one metric per cell.

An axis is a value that identifies a job in a report (host, engine, model, backend, context,
vram_split, workload, and whatever configuration parts and runtime settings the jobs have:
ttm_pages_limit, platform_profile, power_limit_w, or the name of a named `configuration`);
`metric` is one more axis, so metrics can be rows (the default, as in the tables people post:
configurations as columns, metrics as rows) or columns. Every cell pools the samples of its
jobs for its metric and knows n, median, spread and, from 6 samples, a 95% CI; with a
baseline (`host=laptop-80w`) it also knows its ratio to the baseline cell and a verdict.

Example::

    pivot = build_pivot("halo", store.campaign_jobs("halo"),
                        PivotOptions(columns=("host",), baseline=("host", "laptop-80w")))
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from jobs.result import Status
from jobs.spec import JobSpec
from orchestrator.errors import OrchError
from orchestrator.report.metrics import METRIC_LIST, METRICS, Metric, source_note
from orchestrator.stats import CellStats, Comparison, describe
from orchestrator.store import JobRow

# Axes in the order a reader scans them.
AXES = ("host", "engine", "model", "backend", "context", "vram_split", "workload")
METRIC = "metric"
# Axes that describe the box and its reboot-bound configuration: the default columns.
COLUMN_AXES = (
    "host", "configuration", "vram_split", "ttm_pages_limit", "platform_profile", "power_limit_w",
)  # fmt: skip
AXIS_TITLES = {
    "vram_split": "dedicated VRAM", "workload": "workload (pp+tg)",
    "power_limit_w": "power limit (W)", "ttm_pages_limit": "TTM pages limit",
    "gpu_layers": "GPU layers (-ngl)", "concurrency": "concurrency (users)",
    "request_rate": "request rate (requests/s)",
}  # fmt: skip
WAITING = "waiting"
CANCELLED = "cancelled"
DEFAULT_METRICS_WITHOUT_DATA = ("tg", "pp")


class ReportError(OrchError):
    """The report was asked for something the campaign does not have (axis, metric, value)."""


@dataclass(frozen=True)
class PivotOptions:
    """What `orch report --rows/--columns/--metrics/--baseline` asked for (None: defaults)."""

    rows: tuple[str, ...] | None = None
    columns: tuple[str, ...] | None = None
    metrics: tuple[str, ...] | None = None
    baseline: tuple[str, str] | None = None  # (axis, value)
    # More AXIS=VALUE naming one column fully, when `baseline` alone matches several columns
    # (`--baseline host=laptop,vram_split=512M`): see orchestrator.report.baseline.
    baseline_column: tuple[tuple[str, str], ...] = ()


@dataclass
class Record:
    """One job with the axis values that place it in the report."""

    axes: dict[str, Any]
    job: JobRow

    @property
    def status(self) -> str:
        result = self.job.result
        return result.status.value if result else CANCELLED if self.job.cancelled else WAITING


@dataclass
class Cell:
    """The jobs of one (row, column) and the samples of its metric, pooled."""

    metric: Metric
    values: list[float] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    skipped_reasons: list[str] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)  # e.g. what the power figure measured
    comparison: Comparison | None = None
    disturbed_jobs: int = 0  # jobs with figures here that the worker found disturbed

    @cached_property
    def stats(self) -> CellStats | None:
        return describe(self.values, disturbed=self.disturbed_jobs > 0)

    @property
    def failures(self) -> list[str]:
        """Distinct non-ok outcomes in words; skipped ones with their reason."""
        words: list[str] = []
        for status, count in Counter(self.statuses).items():
            if status in (Status.OK.value, WAITING, CANCELLED):
                continue
            if status == Status.SKIPPED.value:
                words += [f"skipped: {r}" if r else "skipped" for r in dict.fromkeys(
                    self.skipped_reasons or [""])]  # fmt: skip
            else:
                words.append(_status_words(status) + (f" ×{count}" if count > 1 else ""))
        return sorted(words)


def _status_words(status: str) -> str:
    try:
        return Status(status).words
    except ValueError:
        return status


def campaign_axes(specs: Sequence[JobSpec]) -> list[dict[str, Any]]:
    """`job_axes` of each job, with a named configuration standing for its parts wherever the
    name alone decides them among these jobs. A part the name does not decide (the matrix varied
    `power_limit_w` beside `configuration: [quiet]`) stays an axis of its own, so jobs at 45 W
    and at 80 W are never pooled into one cell under the name."""
    full = [job_axes(spec, parts=True) for spec in specs]
    seen: dict[str, dict[str, set[str]]] = {}
    for spec, axes in zip(specs, full, strict=True):
        if spec.config_name:
            for part in (*spec.configuration, *spec.settings):
                values = seen.setdefault(part, {}).setdefault(spec.config_name, set())
                values.add(str(axes.get(part)))
    decided = {part for part, by_name in seen.items() if all(len(v) == 1 for v in by_name.values())}
    for spec, axes in zip(specs, full, strict=True):
        if spec.config_name:
            for part in decided:
                axes.pop(part, None)
    _name_sweeps_by_content(specs, full)
    return full


def _name_sweeps_by_content(specs: Sequence[JobSpec], full: list[dict[str, Any]]) -> None:
    """A load sweep (`workload: [c1, c2, c4]`) is one workload at several levels: where the
    level (concurrency or request_rate, axes of their own) decides the workload's name among
    workloads that are otherwise alike, the workload axis says what they share instead of the
    name, so the sweep is one row or column of levels rather than a diagonal of names."""
    names: dict[str, dict[str, set[str | None]]] = {}
    for spec in specs:
        if spec.workload.load is not None:
            level = str(spec.workload.load.level())
            names.setdefault(load_label(spec), {}).setdefault(level, set()).add(spec.workload_name)
    decided = {
        rest for rest, by_level in names.items() if all(len(n) == 1 for n in by_level.values())
    }
    for spec, axes in zip(specs, full, strict=True):
        if spec.workload.load is not None and (label := load_label(spec)) in decided:
            axes["workload"] = label


def job_axes(spec: JobSpec, *, parts: bool = False) -> dict[str, Any]:
    """`JobSpec.axes()` (what identifies a job is the contract's rule), laid out for a report:
    vram_split always ("-" when unset), the workload by its size (and name), in reading order
    (tidy exports keep it as their column order). Use `campaign_axes` for a set of jobs: a
    job alone cannot tell which of its parts its configuration's name decides."""
    identity = spec.axes()
    axes: dict[str, Any] = {k: identity.pop(k) for k in ("host", "engine", "model", "backend")}
    axes["context"] = identity.pop("context")
    axes["vram_split"] = "-"
    identity.pop("workload", None)
    axes["workload"] = workload_label(spec)
    # A named configuration stands for its parts (the matrix says what it holds); without a
    # name, each reboot-bound part (vram_split, ttm_pages_limit...) and each runtime setting is
    # its own axis, so two configurations are never pooled into one cell.
    if spec.config_name and not parts:
        for part in (*spec.configuration, *spec.settings):
            identity.pop(part, None)
    axes.update(identity)  # configuration parts or name, settings, gpu_layers
    return axes


def workload_label(spec: JobSpec) -> str:
    work = spec.workload
    if work.prompt_text:
        text = work.prompt_text if len(work.prompt_text) <= 24 else work.prompt_text[:23] + "…"
        prompt = f'"{text}"'
    else:
        prompt = str(work.prompt_tokens)
    label = f"{prompt}+{work.gen_tokens}" + (f" +image {work.image}" if work.image else "")
    return f"{spec.workload_name} ({label})" if spec.workload_name else label


def load_label(spec: JobSpec) -> str:
    """A load workload without its name and level: lengths (± their spread) and the settings
    that make two runs at one level differ (`512+128, 32 requests, 4 slots`)."""
    work, load = spec.workload, spec.workload.load
    assert load is not None
    # The whole prompt text: a cut one could make two workloads look alike.
    prompt = f'"{work.prompt_text}"' if work.prompt_text else str(work.prompt_tokens)
    spread = {"prompt": load.prompt_tokens_stddev, "gen": load.gen_tokens_stddev}
    lengths = [f"{v}±{spread[k]:g}" if spread[k] else str(v)
               for k, v in (("prompt", prompt), ("gen", work.gen_tokens))]  # fmt: skip
    parts = ["+".join(lengths) + (f" +image {work.image}" if work.image else "")]
    parts.append(f"{load.requests} requests" if load.requests else f"{load.duration_s:g} s")
    if load.slots is not None:
        parts.append(f"{load.slots} slots")
    if load.warmup_requests != 1:
        parts.append(f"warm-up {load.warmup_requests}")
    if load.seed:
        parts.append(f"seed {load.seed}")
    if load.slo is not None:
        slo = load.slo.model_dump(exclude_none=True)
        parts.append("SLO " + " ".join(f"{k}≤{v:g}" for k, v in slo.items()))
    if load.request_timeout_s is not None:
        parts.append(f"timeout {load.request_timeout_s:g} s")
    return ", ".join(parts)


_SIZE = re.compile(r"^(\d+)([MG])$")


def sort_key(value: Any) -> tuple[int, Any]:
    """Numbers as numbers, carve-outs by size (512M before 32G), the rest as text."""
    if isinstance(value, int | float):
        return (0, value)
    size = _SIZE.match(str(value))
    if size:
        return (0, int(size.group(1)) * (1 if size.group(2) == "M" else 1024))
    return (1, str(value))


@dataclass
class Pivot:
    campaign: str
    row_axes: list[str]  # may include METRIC
    column_axes: list[str]  # may include METRIC
    constant_axes: dict[str, Any]  # axes with one value, said once above the table
    metrics: list[Metric]
    rows: list[tuple[Any, ...]]
    columns: list[tuple[Any, ...]]
    cells: dict[tuple[tuple[Any, ...], tuple[Any, ...]], Cell]
    records: list[Record]
    baseline: tuple[str, str] | None = None
    # Lines said under the title: what `orch compare` matched on, which baseline column.
    subtitle: list[str] = field(default_factory=list)

    @property
    def jobs(self) -> list[JobRow]:
        return [r.job for r in self.records]

    def cell(self, row: tuple[Any, ...], column: tuple[Any, ...]) -> Cell | None:
        return self.cells.get((row, column))

    def metric_of(self, row: tuple[Any, ...], column: tuple[Any, ...]) -> Metric:
        if METRIC in self.row_axes:
            return METRICS[row[self.row_axes.index(METRIC)]]
        return METRICS[column[self.column_axes.index(METRIC)]]


def build_pivot(
    campaign: str,
    jobs: list[JobRow],
    options: PivotOptions | None = None,
    *,
    records: list[Record] | None = None,
) -> Pivot:
    """Cells for `jobs` (or for `records` whose axes the caller chose, as `orch compare` does)."""
    options = options or PivotOptions()
    if records is None:
        records = [
            Record(axes, j)
            for axes, j in zip(campaign_axes([j.spec for j in jobs]), jobs, strict=True)
        ]
    axes = list(AXES) + sorted({a for r in records for a in r.axes} - set(AXES))
    values = {a: sorted({r.axes.get(a, "-") for r in records}, key=sort_key) for a in axes}
    varying = [a for a in axes if len(values[a]) > 1]
    row_axes, column_axes = _layout(options, axes, varying)
    metrics = _metrics(options.metrics, records)
    shown = set(row_axes) | set(column_axes)
    constant = {
        a: values[a][0] for a in axes if a not in shown and values[a] and values[a][0] != "-"
    }
    cells: dict[tuple[tuple[Any, ...], tuple[Any, ...]], Cell] = {}
    for record in records:
        for metric in metrics:
            place = {**record.axes, METRIC: metric.key}
            row = tuple(place.get(a, "-") for a in row_axes)
            column = tuple(place.get(a, "-") for a in column_axes)
            cell = cells.setdefault((row, column), Cell(metric))
            _add(cell, record)
    order = {m.key: i for i, m in enumerate(metrics)}

    def key(labels: tuple[Any, ...], names: list[str]) -> tuple[Any, ...]:
        pairs = zip(names, labels, strict=True)
        return tuple((0, order[v]) if a == METRIC else sort_key(v) for a, v in pairs)

    rows = sorted({r for r, _ in cells}, key=lambda r: key(r, row_axes))
    columns = sorted({c for _, c in cells}, key=lambda c: key(c, column_axes))
    pivot = Pivot(campaign, row_axes, column_axes, constant, metrics, rows, columns, cells, records)
    if options.baseline:
        # Imported here: the baseline rules build on Pivot, defined above.
        from orchestrator.report.baseline import apply_baseline

        apply_baseline(pivot, options, values)
    return pivot


def _layout(
    options: PivotOptions, axes: list[str], varying: list[str]
) -> tuple[list[str], list[str]]:
    known = [*axes, METRIC]
    for name in (*(options.rows or ()), *(options.columns or ())):
        if name not in known:
            raise ReportError(f"unknown axis {name!r}: choose from {', '.join(known)}")
    if options.columns is not None:
        columns = list(options.columns)
    else:
        taken = set(options.rows or ())
        columns = [a for a in COLUMN_AXES if a in varying and a not in taken]
        if not columns and "host" not in taken:
            columns = ["host"]
    if options.rows is not None:
        rows = list(options.rows)
    else:
        rows = [a for a in varying if a not in columns]
    both = set(rows) & set(columns)
    if both:
        raise ReportError(f"axis {sorted(both)[0]!r} is in both --rows and --columns")
    # An axis that varies but is in neither would pool different configurations in one cell.
    missing = [a for a in varying if a not in rows and a not in columns]
    if METRIC in rows:  # metrics stay the innermost rows
        at = rows.index(METRIC)
        rows[at:at] = missing
    else:
        rows += missing
    if METRIC not in rows and METRIC not in columns:
        rows.append(METRIC)
    return rows, columns


def _metrics(asked: tuple[str, ...] | None, records: list[Record]) -> list[Metric]:
    if asked is not None:
        asked = tuple(dict.fromkeys(asked))  # `tg,tg` is one row, not the samples twice
        unknown = [m for m in asked if m not in METRICS]
        if unknown:
            raise ReportError(f"unknown metric {unknown[0]!r}: choose from {', '.join(METRICS)}")
        return [METRICS[m] for m in asked]
    results = [r.job.result for r in records if r.job.result and r.job.result.status is Status.OK]
    chosen = []
    for metric in METRIC_LIST:
        seen = {v for result in results for v in metric.values(result)}
        if seen and not (metric.hide_when_constant and len(seen) == 1):
            chosen.append(metric)
    return chosen or [METRICS[m] for m in DEFAULT_METRICS_WITHOUT_DATA]


def _add(cell: Cell, record: Record) -> None:
    cell.statuses.append(record.status)
    result = record.job.result
    if result is None:
        return
    if result.status is Status.SKIPPED:
        cell.skipped_reasons.append((result.error or "").strip().split("\n")[0])
    if result.status is not Status.OK:
        return
    values = cell.metric.values(result)
    cell.values.extend(values)
    if values and result.disturbed:
        cell.disturbed_jobs += 1
    if values and (note := source_note(cell.metric.key, result)):
        cell.notes.add(note)
