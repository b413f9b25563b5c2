"""Charts of serving under load for the HTML report (only when a campaign has load runs).

- throughput (output tokens/s, all users) against latency (TTFT p90, or the first latency
  metric the report shows: `--metrics throughput,itl_p99` draws against ITL p99), one curve
  per configuration (host, carve-out, backend... whatever varies besides the load level), each
  point labelled by its level: the classic "how far can it be pushed before it gets slow";
- tokens/s per user against concurrency, one curve per configuration (closed loops only):
  where a curve crosses the speed a reader needs is how many users the box serves at it.

Each point is the median over the load run's repetitions (one LoadSummary each); its bars are
the 95% CI of the median from 6 repetitions, the range (min-max) below (n is in the title).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from matplotlib.figure import Figure

from jobs import load as lm
from jobs.load import LoadSummary
from jobs.result import Status
from orchestrator.report.charts import Chart, figure_svg
from orchestrator.report.metrics import METRICS
from orchestrator.report.pivot import METRIC, Pivot, Record, sort_key
from orchestrator.stats import CellStats, describe

# Latencies the throughput chart can be drawn against: TTFT p90 where the report shows it (or
# shows none), else the first the report shows.
LATENCY_METRICS = (lm.TTFT_P90, lm.TTFT_P50, lm.TTFT_P99, lm.ITL_P50, lm.ITL_P99, lm.E2E_P90)


@dataclass
class _Curve:
    """One configuration at each load level it ran: level value -> the runs' summaries."""

    name: str
    axis: str  # lm.CONCURRENCY or lm.REQUEST_RATE
    points: dict[float, list[LoadSummary]] = field(default_factory=dict)


def load_charts(pivot: Pivot) -> list[Chart]:
    records = [r for r in pivot.records if _summaries(r)]
    if not records:
        return []
    curves = _curves(records)
    shown = [m.key for m in pivot.metrics if m.key in LATENCY_METRICS]
    x_metric = lm.TTFT_P90 if lm.TTFT_P90 in shown or not shown else shown[0]
    closed = [c for c in curves if c.axis == lm.CONCURRENCY]
    charts = [
        _chart(curves, x_metric, lm.THROUGHPUT, "load"),
        _chart(closed, None, lm.TPS_PER_USER, "load-users"),
    ]
    return [c for c in charts if c is not None]


def _summaries(record: Record) -> list[LoadSummary]:
    result = record.job.result
    if result is None or result.status is not Status.OK or result.load is None:
        return []
    return [run.summary for run in result.load.runs]


def _curves(records: list[Record]) -> list[_Curve]:
    """Records grouped by configuration: every axis that varies among them but the level."""
    names = list(dict.fromkeys(a for r in records for a in r.axes))
    varying = [
        a
        for a in names
        if a not in (*lm.LEVEL_AXES, METRIC) and len({str(r.axes.get(a)) for r in records}) > 1
    ]
    curves: dict[tuple[str, str], _Curve] = {}
    for record in records:
        spec_load = record.job.spec.workload.load
        if spec_load is None:
            continue
        ((axis, level),) = spec_load.level().items()
        name = " ".join(str(record.axes.get(a, "-")) for a in varying) or "all"
        curve = curves.setdefault((name, axis), _Curve(name, axis))
        curve.points.setdefault(float(level), []).extend(_summaries(record))
    return sorted(curves.values(), key=lambda c: (c.axis, sort_key(c.name)))


def _stats(summaries: Sequence[LoadSummary], metric: str) -> CellStats | None:
    return describe([v for s in summaries if (v := s.metric(metric)) is not None])


def _bars(stats: CellStats) -> tuple[float, float]:
    """Distances below and above the median: the 95% CI, or the range below 6 samples."""
    low = stats.ci_low if stats.ci_low is not None else min(stats.samples)
    high = stats.ci_high if stats.ci_high is not None else max(stats.samples)
    return stats.median - low, high - stats.median


def _level_text(axis: str, level: float) -> str:
    return f"{level:g}" if axis == lm.CONCURRENCY else f"{level:g}/s"


def _chart(curves: list[_Curve], x_metric: str | None, y_metric: str, kind: str) -> Chart | None:
    """y against x_metric (None: against concurrency), one line per curve."""
    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.add_subplot()
    ns: set[int] = set()
    for curve in curves:
        points = []
        for level, summaries in sorted(curve.points.items()):
            y = _stats(summaries, y_metric)
            x = _stats(summaries, x_metric) if x_metric else None
            if y is None or (x_metric and x is None):
                continue
            points.append((level, x, y))
            ns.update({y.n} | ({x.n} if x else set()))
        if not points:
            continue
        xs = [x.median if x else level for level, x, _ in points]
        ys = [y.median for _, _, y in points]
        yerr = list(zip(*(_bars(y) for _, _, y in points), strict=True))
        xerr = list(zip(*(_bars(x) for _, x, _ in points if x), strict=True)) or None
        label = curve.name + (" (request rate)" if curve.axis == lm.REQUEST_RATE else "")
        ax.errorbar(xs, ys, yerr=yerr, xerr=xerr, marker="o", capsize=3, label=label)
        for (level, _, _), x_at, y_at in zip(points, xs, ys, strict=True):
            text = _level_text(curve.axis, level)
            ax.annotate(text, (x_at, y_at), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if not ns:
        return None
    y_title = METRICS[y_metric].title
    if x_metric:
        x_title = METRICS[x_metric].title
        ax.set_xlabel(f"{x_title} (points: concurrency, or requests/s)")
        title = f"{y_title} vs {x_title}"
    else:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (users)")
        title = f"{y_title} vs concurrency"
    ax.set_ylabel(y_title)
    ax.legend(fontsize=8)
    n = f"{min(ns)}" if len(ns) == 1 else f"{min(ns)}-{max(ns)}"
    title += f" (median of n={n} runs per point; bars: 95% CI from 6, else range)"
    ax.set_title(title, fontsize=9)
    return Chart(kind, title, figure_svg(fig))
