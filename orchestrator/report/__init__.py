"""The comparison report: what the user reads and posts.

`build_pivot` places a campaign's jobs in cells (by default configurations/hosts as columns
and metrics as rows, like the tables people post); `render` writes it as a terminal table,
GitHub Markdown, tidy CSV/JSON (one row per job), a self-contained HTML page with charts, or
llama-bench's own JSON. Every cell knows n, median, spread and, from 6 samples, a 95% bootstrap
CI; with a baseline, a ratio and a verdict only an exact test can give (see
`orchestrator.stats.compare`).

Example::

    pivot = build_pivot("halo", store.campaign_jobs("halo"),
                        PivotOptions(baseline=("host", "laptop-80w")))
    print(render(pivot, "md"))
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.report.pivot import (
        AXES,
        METRIC,
        Cell,
        Pivot,
        PivotOptions,
        Record,
        ReportError,
        build_pivot,
    )
    from orchestrator.report.render_text import cell_text
    from orchestrator.report.tidy import tidy_rows

FORMATS = ("table", "md", "csv", "json", "html", "llama-bench-json")

# The names above, imported on first use: the CLI imports this package for FORMATS on every
# command (`orch --help` too), and the report's modules bring numpy, pydantic and the store.
_PIVOT_NAMES = ("AXES", "METRIC", "Cell", "Pivot", "PivotOptions", "Record", "ReportError")
_LAZY = {
    **dict.fromkeys((*_PIVOT_NAMES, "build_pivot"), "orchestrator.report.pivot"),
    "cell_text": "orchestrator.report.render_text",
    "tidy_rows": "orchestrator.report.tidy",
}

__all__ = [
    "AXES",
    "FORMATS",
    "METRIC",
    "Cell",
    "Pivot",
    "PivotOptions",
    "Record",
    "ReportError",
    "build_pivot",
    "cell_text",
    "render",
    "tidy_rows",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups find it without this function
    return value


def render(pivot: Pivot, fmt: str) -> str:
    from orchestrator.report.pivot import ReportError
    from orchestrator.report.render_text import render_text
    from orchestrator.report.tidy import render_llama_bench_json, render_tidy

    if fmt in ("csv", "json"):
        return render_tidy(pivot, fmt)
    if fmt == "llama-bench-json":
        return render_llama_bench_json(pivot)
    if fmt == "html":
        # matplotlib is imported only when a chart is drawn.
        from orchestrator.report.render_html import render_html

        return render_html(pivot)
    if fmt in ("table", "md"):
        return render_text(pivot, md=fmt == "md")
    raise ReportError(f"unknown report format {fmt!r}: choose from {', '.join(FORMATS)}")
