"""A self-contained HTML report: the table, its legend and failures, and charts as inline SVG.

No external URL, script or font: the file can be mailed, attached to an issue or opened
offline. Each chart is a `<figure class="chart" data-kind="...">` (bar, context, load,
load-users, timeline) with a `<figcaption>` naming it, so a test (or a reader's script) can
find them.
"""

from __future__ import annotations

from html import escape

from orchestrator.report.charts import (
    Chart,
    bar_charts,
    chart_id,
    context_charts,
    timeline_charts,
)
from orchestrator.report.load_charts import load_charts
from orchestrator.report.pivot import Pivot
from orchestrator.report.render_text import (
    axis_title,
    finished_summary,
    legend,
    note_marks,
    sections,
    table,
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
td.figure { font-variant-numeric: tabular-nums; white-space: nowrap; }
figure.chart { margin: 2em 0; }
figure.chart svg { max-width: 100%; height: auto; }
p.legend { font-size: 0.85em; color: #555; max-width: 60em; }
"""


def render_html(pivot: Pivot) -> str:
    headers, body = table(pivot, note_marks(pivot))
    labels = len(headers) - len(pivot.columns)
    constants = ", ".join(f"{axis_title(k)} {v}" for k, v in pivot.constant_axes.items())
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>orch report: {escape(pivot.campaign)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{escape(pivot.campaign)}</h1>",
        f"<p>{escape(constants + '; ' if constants else '')}{escape(finished_summary(pivot))}</p>",
        *(f"<p>{escape(line)}</p>" for line in pivot.subtitle),
        '<table class="report"><thead><tr>',
        *(f"<th>{escape(h)}</th>" for h in headers),
        "</tr></thead><tbody>",
    ]
    for row in body:
        cells = [
            f'<td class="{"label" if i < labels else "figure"}">{escape(text)}</td>'
            for i, text in enumerate(row)
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    out += [f'<p class="legend">{escape(line)}</p>' for line in legend(pivot)]
    for title, items in sections(pivot):
        if items:
            out.append(f"<h2>{escape(title)}</h2><ul>")
            out += [f"<li>{escape(item)}</li>" for item in items]
            out.append("</ul>")
    charts = bar_charts(pivot) + context_charts(pivot) + load_charts(pivot) + timeline_charts(pivot)
    if charts:
        out.append("<h2>Charts</h2>")
    out += [_figure(chart, i) for i, chart in enumerate(charts)]
    out.append("</body></html>")
    return "\n".join(out)


def _figure(chart: Chart, index: int) -> str:
    return (
        f'<figure class="chart" id="{chart_id(chart, index)}" data-kind="{chart.kind}">'
        f"<figcaption>{escape(chart.title)}</figcaption>\n{chart.svg}</figure>"
    )
