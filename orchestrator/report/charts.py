"""Charts for the HTML report, drawn with matplotlib (no pyplot state) as inline SVG.

- `bar_charts`: one metric by configuration and host/column, medians with 95% CI whiskers
  (from 6 samples; none below);
- `context_charts`: tokens/s against context length, one line per configuration;
- `timeline_charts`: per job, the telemetry series (GPU and copy-engine busy, power, VRAM/GTT).
The SVG is deterministic for the same data (fixed hash salt, no date), and self-contained
(text drawn as paths, no fonts or URLs needed).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import matplotlib
from matplotlib.figure import Figure

from orchestrator.report.metrics import METRICS, Metric
from orchestrator.report.pivot import METRIC, Pivot, Record, sort_key
from orchestrator.stats import describe

matplotlib.rcParams["svg.hashsalt"] = "orch"
BAR_METRICS = ("tg", "pp", "ttft")
MAX_TIMELINES = 12
_GB = 1e9


@dataclass(frozen=True)
class Chart:
    kind: str  # "bar", "context", "timeline"
    title: str
    svg: str


def figure_svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _label(names: list[str], labels: tuple[Any, ...]) -> str:
    return " ".join(str(v) for a, v in zip(names, labels, strict=True) if a != METRIC) or "all"


def bar_charts(pivot: Pivot) -> list[Chart]:
    charts: list[Chart] = []
    for metric in pivot.metrics:
        if metric.key in BAR_METRICS:
            chart = _bar_chart(pivot, metric)
            if chart is not None:
                charts.append(chart)
    return charts


def _bar_chart(pivot: Pivot, metric: Metric) -> Chart | None:
    groups: dict[str, dict[str, tuple[float, float, float]]] = {}
    series: list[str] = []
    placed = ((r, c, pivot.cell(r, c)) for r in pivot.rows for c in pivot.columns)
    for row, column, cell in placed:
        if cell is None or cell.metric.key != metric.key or cell.stats is None:
            continue
        stats = cell.stats
        low = stats.ci_low if stats.ci_low is not None else stats.median
        high = stats.ci_high if stats.ci_high is not None else stats.median
        name = _label(pivot.column_axes, column)
        groups.setdefault(_label(pivot.row_axes, row), {})[name] = (stats.median, low, high)
        if name not in series:
            series.append(name)
    if not groups:
        return None
    fig = Figure(figsize=(max(6.0, 1.2 * len(groups) * max(1, len(series))), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        xs, heights, lows, highs = [], [], [], []
        for g, group in enumerate(groups.values()):
            if name in group:
                median, low, high = group[name]
                xs.append(g + i * width)
                heights.append(median)
                lows.append(median - low)
                highs.append(high - median)
        ax.bar(xs, heights, width, yerr=[lows, highs], capsize=3, label=name)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels(list(groups), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(metric.title)
    ax.legend(fontsize=8)
    title = f"{metric.title} by configuration (median; 95% CI from 6 samples)"
    ax.set_title(title, fontsize=10)
    return Chart("bar", title, figure_svg(fig))


def context_charts(pivot: Pivot) -> list[Chart]:
    """tokens/s against context length, when the campaign has more than one context."""
    contexts = {r.axes.get("context") for r in pivot.records}
    if len(contexts) < 2:
        return []
    varying = [a for a in pivot.row_axes + pivot.column_axes if a not in (METRIC, "context")]
    charts: list[Chart] = []
    for metric in (METRICS["tg"], METRICS["pp"]):
        if metric not in pivot.metrics:
            continue
        lines: dict[str, dict[int, list[float]]] = {}
        for record in pivot.records:
            result = record.job.result
            if result is None or result.status.value != "ok":
                continue
            name = " ".join(str(record.axes.get(a)) for a in varying) or metric.title
            lines.setdefault(name, {}).setdefault(record.axes["context"], []).extend(
                metric.values(result)
            )
        chart = _line_chart(metric, lines)
        if chart is not None:
            charts.append(chart)
    return charts


def _line_chart(metric: Metric, lines: dict[str, dict[int, list[float]]]) -> Chart | None:
    fig = Figure(figsize=(7.0, 4.0))
    ax = fig.add_subplot()
    drawn = False
    for name, by_context in sorted(lines.items()):
        ordered = sorted(by_context.items(), key=lambda kv: sort_key(kv[0]))
        points = [(c, describe(v)) for c, v in ordered]
        points = [(c, s) for c, s in points if s is not None]
        if len(points) < 2:  # a line needs two contexts
            continue
        xs = [c for c, _ in points]
        ys = [s.median for _, s in points if s is not None]
        err_low = [s.median - (s.ci_low if s.ci_low is not None else s.median)
                   for _, s in points if s is not None]  # fmt: skip
        err_high = [(s.ci_high if s.ci_high is not None else s.median) - s.median
                    for _, s in points if s is not None]  # fmt: skip
        ax.errorbar(xs, ys, yerr=[err_low, err_high], marker="o", capsize=3, label=name)
        drawn = True
    if not drawn:
        return None
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(metric.title)
    ax.legend(fontsize=8)
    title = f"{metric.title} vs context length (median; 95% CI from 6 samples)"
    ax.set_title(title, fontsize=10)
    return Chart("context", title, figure_svg(fig))


# Series a timeline panel draws: (panel, series key, label, scale).
_PANELS: tuple[tuple[str, tuple[tuple[str, str, float], ...]], ...] = (
    ("busy (%)", (("gpu_busy_pct", "GPU busy", 1.0), ("engine_dma_busy_pct", "copy engine", 1.0),
                  ("engine_gfx_busy_pct", "gfx engine", 1.0))),
    ("power (W)", (("power_w", "power", 1.0), ("package_power_w", "CPU package (RAPL)", 1.0))),
    ("memory (GB)", (("vram_used_bytes", "VRAM", _GB), ("gtt_used_bytes", "GTT", _GB),
                     ("rss_bytes", "engine RSS", _GB))),
)  # fmt: skip


def timeline_charts(pivot: Pivot) -> list[Chart]:
    charts: list[Chart] = []
    for record in pivot.records:
        if len(charts) >= MAX_TIMELINES:
            break
        chart = _timeline(record)
        if chart is not None:
            charts.append(chart)
    return charts


def _timeline(record: Record) -> Chart | None:
    result = record.job.result
    telemetry = result.telemetry if result else None
    if telemetry is None:
        return None
    series = record.job.series()  # kept apart in the store: read for the runs drawn only
    if not series.get("t_s"):
        return None
    panels = [
        (title, [(k, label, scale) for k, label, scale in keys if _has_values(series.get(k))])
        for title, keys in _PANELS
    ]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        return None
    fig = Figure(figsize=(7.0, 1.8 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    t = series["t_s"]
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key, label, scale in keys:
            ys = [v / scale if v is not None else float("nan") for v in series[key]]
            ax.plot([x if x is not None else float("nan") for x in t], ys, label=label)
        ax.set_ylabel(title, fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    for phase in telemetry.phases:
        for ax in axes:
            ax.axvspan(phase.start_s, phase.end_s, alpha=0.08, color="grey")
    axes[-1].set_xlabel("time (s)")
    spec = record.job.spec
    title = f"telemetry: {spec.host} {spec.model} {spec.backend} ctx {spec.context} ({spec.engine})"
    fig.suptitle(title, fontsize=10)
    return Chart("timeline", title, figure_svg(fig))


def _has_values(values: list[float | None] | None) -> bool:
    return bool(values) and any(v is not None for v in values or [])


def chart_id(chart: Chart, index: int) -> str:
    return f"chart-{index}-" + re.sub(r"[^a-z0-9]+", "-", chart.title.lower()).strip("-")[:40]
