"""The pivot as a terminal table or a paste-ready GitHub Markdown table.

A cell reads `43.1 [42.8–43.5] n=8`: the median, its 95% confidence interval (two order
statistics: `orchestrator.stats.median_ci`) and the number of samples; below 6 samples
`43.1 (42.6–43.6) n=3`, the median and the range (min–max),
since no honest 95% interval exists there. `⚠` marks an unstable cell; with a baseline,
`· 1.35× faster` (an exact Mann-Whitney U test rejects at 5%), `· 0.98× ≈` (not
distinguishable) or `· 1.10× n<3` (too few samples to say).
A cell without figures says why: `load failed`, `timeout`, `skipped: predicted OOM (...)`,
`waiting`, or `-` when the jobs ran but do not have that metric.
"""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from jobs.result import Status
from orchestrator.predictions import CHECKS_TITLE, check_items, check_predictions
from orchestrator.report.metrics import METRICS
from orchestrator.report.pivot import (
    AXIS_TITLES,
    CANCELLED,
    METRIC,
    WAITING,
    Cell,
    Pivot,
)
from orchestrator.stats import (
    MIN_SAMPLES_FOR_CI,
    MIN_SAMPLES_FOR_VERDICT,
    UNSTABLE_SPREAD,
    Verdict,
    fmt_number,
)

UNSTABLE_MARK = "⚠"
NOT_DISTINGUISHABLE_MARK = "≈"
DISTURBED_MARK = "↯"
MISSING = "-"


def verdict_text(cell: Cell) -> str:
    """`1.35× faster`, `0.98× ≈`, `1.10× n<3`; empty without a comparison."""
    comparison = cell.comparison
    if comparison is None:
        return ""
    ratio = f"{fmt_number(comparison.ratio)}×" if comparison.ratio is not None else "n/a×"
    words = {
        Verdict.UP: cell.metric.up_word,
        Verdict.DOWN: cell.metric.down_word,
        Verdict.SAME: NOT_DISTINGUISHABLE_MARK,
        Verdict.TOO_FEW: f"n<{MIN_SAMPLES_FOR_VERDICT}",
        Verdict.DISTURBED: f"{NOT_DISTINGUISHABLE_MARK} disturbed",
    }
    return f"{ratio} {words[comparison.verdict]}"


def cell_text(cell: Cell | None, note_marks: dict[str, str] | None = None) -> str:
    if cell is None:
        return MISSING
    stats = cell.stats
    if stats is None:
        return _without_figures(cell)
    text = fmt_number(stats.median)
    if stats.ci_low is not None and stats.ci_high is not None:
        text += f" [{fmt_number(stats.ci_low)}–{fmt_number(stats.ci_high)}]"
    elif stats.n > 1:
        text += f" ({fmt_number(min(stats.samples))}–{fmt_number(max(stats.samples))})"
    text += f" n={stats.n}"
    if stats.unstable:
        text += f" {UNSTABLE_MARK}"
    if cell.disturbed_jobs:
        text += f" {DISTURBED_MARK}"
    for note in sorted(cell.notes):
        text += (note_marks or {}).get(note, "")
    if verdict := verdict_text(cell):
        text += f" · {verdict}"
    if failures := cell.failures:
        text += f" (+{', '.join(failures)})"
    return text


def _without_figures(cell: Cell) -> str:
    if failures := cell.failures:
        return ", ".join(failures)
    if Status.OK.value in cell.statuses:
        return MISSING
    return CANCELLED if CANCELLED in cell.statuses and WAITING not in cell.statuses else WAITING


def axis_title(axis: str) -> str:
    return AXIS_TITLES.get(axis, axis)


def _label(axis: str, value: Any) -> str:
    return METRICS[value].title if axis == METRIC else str(value)


def table(
    pivot: Pivot, note_marks: dict[str, str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Headers and body rows; repeated row labels are left blank, as in a printed table.

    With metrics as rows, a metric no job of a row group has is left out, and a group with no
    figures at all (every job failed, was skipped or waits) is one line: `all metrics`.
    """
    column_titles = [
        " ".join(_label(a, v) for a, v in zip(pivot.column_axes, column, strict=True)) or "value"
        for column in pivot.columns
    ]
    # Above the metric names: what the columns are (e.g. "dedicated VRAM | 512M | 32G").
    over_metrics = " / ".join(axis_title(a) for a in pivot.column_axes) or METRIC
    headers = [over_metrics if a == METRIC else axis_title(a) for a in pivot.row_axes]
    lines = [
        ([_label(a, v) for a, v in zip(pivot.row_axes, row, strict=True)], row,
         [cell_text(pivot.cell(row, c), note_marks) for c in pivot.columns])
        for row in pivot.rows
    ]  # fmt: skip
    if METRIC in pivot.row_axes:
        lines = _collapse(pivot, lines)
    body: list[list[str]] = []
    previous: tuple[Any, ...] = ()
    for labels, row, texts in lines:
        shown = list(labels)
        for i in range(len(labels) - 1):  # the last label always shows
            if previous[: i + 1] == row[: i + 1]:
                shown[i] = ""
        previous = row
        body.append(shown + texts)
    return headers + column_titles, body


_Line = tuple[list[str], tuple[Any, ...], list[str]]


def _collapse(pivot: Pivot, lines: list[_Line]) -> list[_Line]:
    at = pivot.row_axes.index(METRIC)
    groups: dict[tuple[Any, ...], list[_Line]] = {}
    for line in lines:
        row = line[1]
        groups.setdefault(row[:at] + row[at + 1 :], []).append(line)
    out: list[_Line] = []
    for group in groups.values():
        has_figures = any(
            (cell := pivot.cell(row, c)) is not None and cell.stats is not None
            for _, row, _ in group
            for c in pivot.columns
        )
        if not has_figures:
            labels, row, texts = group[0]
            out.append((labels[:at] + ["all metrics"] + labels[at + 1 :], row, texts))
            continue
        out += [line for line in group if any(t != MISSING for t in line[2])]
    return out


def note_marks(pivot: Pivot) -> dict[str, str]:
    """One footnote mark per distinct cell note (where a figure came from: `source_note`)."""
    notes = sorted({n for cell in pivot.cells.values() for n in cell.notes})
    marks = ["†", "‡", "§", "¶"]
    return {note: marks[i % len(marks)] * (1 + i // len(marks)) for i, note in enumerate(notes)}


def legend(pivot: Pivot) -> list[str]:
    lines = [
        "Cells: median [95% CI of the median, from order statistics] n=samples (repetitions "
        f"pooled over the cell's jobs); below {MIN_SAMPLES_FOR_CI} samples median (min–max) "
        "n=samples: no interval there reaches 95% (the range holds the true median 75-94% of "
        f"the time). {UNSTABLE_MARK} = unstable: robust spread 1.4826·MAD/median above "
        f"{UNSTABLE_SPREAD:.0%}. tg = text generation, pp = prompt processing."
    ]
    if pivot.baseline:
        axis, value = pivot.baseline
        lines.append(
            f"Ratios are to {axis_title(axis)} {value} (median / baseline median): faster or "
            "slower only where an exact two-sided Mann-Whitney U test rejects at 5% "
            f"(never with 3 samples a side: use 5+); {NOT_DISTINGUISHABLE_MARK} = not "
            f"distinguishable; n<{MIN_SAMPLES_FOR_VERDICT} = too few samples for a verdict."
        )
    lines.append(
        "llama-bench: the KV cache is pre-filled to context - prompt - gen tokens. Server "
        "engines: TTFT as the client sees it (LM Studio: its own), pp and tg from the "
        "engine's own timing (llama-server, LM Studio, Ollama; an OpenAI-compatible server "
        "only when it adds llama-server's timings, else tg by the client)."
    )
    lines += [f"{mark} {note}" for note, mark in note_marks(pivot).items()]
    if any(cell.disturbed_jobs for cell in pivot.cells.values()):
        lines.append(
            f"{DISTURBED_MARK} = disturbed: some of the cell's samples come from runs during "
            "which other processes used the box beyond its worker's thresholds (`disturbance:` "
            f"in worker.yaml; see Disturbed runs below); no faster or slower is drawn from them "
            f"({NOT_DISTINGUISHABLE_MARK} disturbed)."
        )
    return lines


def finished_summary(pivot: Pivot) -> str:
    """`8/8 jobs finished`, and how many of those the worker found disturbed."""
    results = [r.job.result for r in pivot.records if r.job.result is not None]
    text = f"{len(results)}/{len(pivot.records)} jobs finished"
    disturbed = sum(1 for result in results if result.disturbed)
    return text + (f", {disturbed} disturbed" if disturbed else "")


def render_text(pivot: Pivot, *, md: bool) -> str:
    headers, body = table(pivot, note_marks(pivot))
    constants = ", ".join(f"{axis_title(k)} {v}" for k, v in pivot.constant_axes.items())
    if md:
        out = [f"### {pivot.campaign}", ""]
        summary = finished_summary(pivot)
        out += [f"*{constants}; {summary}*" if constants else f"*{summary}*", ""]
        out += [f"*{line}*  " for line in pivot.subtitle] + ([""] if pivot.subtitle else [])
        out += [tabulate(body, headers, tablefmt="github", disable_numparse=True), ""]
        out += [line + "  " if i < len(legend(pivot)) - 1 else line
                for i, line in enumerate(legend(pivot))]  # fmt: skip
    else:
        out = [f"campaign {pivot.campaign}: {finished_summary(pivot)}"]
        if constants:
            out.append(constants)
        out += pivot.subtitle
        out += ["", tabulate(body, headers, tablefmt="simple", disable_numparse=True), ""]
        out += legend(pivot)
    for title, items in sections(pivot):
        if items:
            out += ["", f"{title}:", *(("- " if md else "  ") + item for item in items)]
    return "\n".join(out)


def sections(pivot: Pivot) -> list[tuple[str, list[str]]]:
    """What follows the table in every format: failures, then the planner's predictions."""
    checks = check_items(check_predictions([r.job for r in pivot.records]))
    return [
        ("Failures", failure_items(pivot)),
        ("Disturbed runs", disturbed_items(pivot)),
        (CHECKS_TITLE, checks),
    ]


def disturbed_items(pivot: Pivot) -> list[str]:
    """One line per disturbed run: where, and why (the worker's reasons name the culprits)."""
    notes = []
    for record in pivot.records:
        result = record.job.result
        if result is None or result.disturbance is None or not result.disturbed:
            continue
        spec = record.job.spec
        notes.append(
            f"{spec.host} {spec.engine} {spec.model} ctx {spec.context} (job {result.job_id}): "
            + "; ".join(result.disturbance.reasons)
        )
    return notes


def failure_items(pivot: Pivot) -> list[str]:
    notes = []
    for record in pivot.records:
        result = record.job.result
        if result is None or result.status in (Status.OK, Status.SKIPPED):
            continue  # a skipped job's cell already says why
        # First line says what happened (exit code, timeout); the last is the engine's own word.
        lines = [line for line in (result.error or "").strip().splitlines() if line.strip()]
        reason = lines[0] if lines else ""
        if len(lines) > 1:
            reason += f": {lines[-1].strip()}"
        spec = record.job.spec
        notes.append(
            f"{spec.host} {spec.model} ctx {spec.context}: "
            f"{result.status.words} (job {result.job_id}): {reason}"
        )
    return notes
