"""`--baseline AXIS=VALUE`: which cell each other cell is compared with.

On a row axis, every row is compared with the row of the baseline value that agrees with it on
the other row axes (`--baseline backend=vulkan` with rows backend x context: rocm 8192 against
vulkan 8192), as a reader scans down a table.

On a column axis the baseline is one column, and every other column is compared with it, row
by row (and metric by metric when metrics are columns). When AXIS=VALUE matches several
columns (`--baseline host=laptop` while the columns are host x dedicated VRAM), no column is
guessed: the report is refused with the candidates listed, and the user names one fully
(`--baseline host=laptop,vram_split=512M`) or moves the other axis to the rows to compare
like with like. Guessing would silently compare a 32G column with a 512M one, or with nothing.

Example::

    build_pivot("halo", jobs, PivotOptions(columns=("host", "vram_split"),
                baseline=("host", "laptop"), baseline_column=(("vram_split", "512M"),)))
"""

from __future__ import annotations

from typing import Any

from orchestrator.report.pivot import (
    AXIS_TITLES,
    METRIC,
    Pivot,
    PivotOptions,
    ReportError,
)
from orchestrator.stats import compare

_Labels = tuple[Any, ...]


def apply_baseline(pivot: Pivot, options: PivotOptions, values: dict[str, list[Any]]) -> None:
    """Give every cell with figures its comparison with its baseline cell (see the module)."""
    assert options.baseline is not None
    axis, wanted = options.baseline
    named = f"--baseline {_text(options)}"
    in_rows = axis in pivot.row_axes
    if axis == METRIC or not (in_rows or axis in pivot.column_axes):
        raise ReportError(
            f"{named}: {axis!r} is not a row or column axis of this report "
            f"(rows: {', '.join(pivot.row_axes)}; columns: {', '.join(pivot.column_axes)})"
        )
    match = [v for v in values.get(axis, []) if str(v) == wanted]
    if not match:
        choices = ", ".join(str(v) for v in values.get(axis, []))
        raise ReportError(f"{named}: no such {axis} (have: {choices})")
    if in_rows:
        if options.baseline_column:
            raise ReportError(
                f"{named}: {axis!r} is a row axis; naming a baseline column takes column axes "
                f"(columns: {', '.join(pivot.column_axes)})"
            )
        _compare_rows(pivot, pivot.row_axes.index(axis), match[0])
    else:
        _compare_with_column(pivot, _baseline_column(pivot, options, named))
    pivot.baseline = (axis, wanted)


def _text(options: PivotOptions) -> str:
    assert options.baseline is not None
    return ",".join(f"{a}={v}" for a, v in (options.baseline, *options.baseline_column))


def _compare_rows(pivot: Pivot, at: int, value: Any) -> None:
    for (row, column), cell in pivot.cells.items():
        if row[at] == value or cell.stats is None:
            continue
        base = pivot.cells.get((row[:at] + (value,) + row[at + 1 :], column))
        if base is not None and base.stats is not None:
            cell.comparison = compare(cell.stats, base.stats)


def _identity(pivot: Pivot, column: _Labels) -> _Labels:
    """A column's labels without the metric: metrics are always compared like with like."""
    return tuple(v for a, v in zip(pivot.column_axes, column, strict=True) if a != METRIC)


def _baseline_column(pivot: Pivot, options: PivotOptions, named: str) -> _Labels:
    """The one column (labels without the metric) that --baseline names."""
    assert options.baseline is not None
    axes = [a for a in pivot.column_axes if a != METRIC]
    wanted = dict([options.baseline, *options.baseline_column])
    stray = [a for a in wanted if a not in axes]
    if stray or len(wanted) < 1 + len(options.baseline_column):
        raise ReportError(
            f"{named}: name each column axis once, from {', '.join(axes)}"
            + (f" ({stray[0]!r} is not a column axis)" if stray else "")
        )
    identities = dict.fromkeys(_identity(pivot, c) for c in pivot.columns)
    found = [
        labels
        for labels in identities
        if all(str(labels[axes.index(a)]) == v for a, v in wanted.items())
    ]
    if not found:
        have = "; ".join(_describe(axes, labels) for labels in identities)
        raise ReportError(f"{named}: no column has that (columns: {have})")
    if len(found) > 1:
        others = [a for a in axes if a not in wanted]
        first = ",".join(f"{a}={v}" for a, v in zip(axes, found[0], strict=True))
        raise ReportError(
            f"{named} matches {len(found)} columns ("
            + "; ".join(_describe(axes, labels) for labels in found)
            + f"): name one fully, e.g. --baseline {first}, to compare every column with it, "
            f"or put {', '.join(others)} in --rows to compare each with its like"
        )
    if len(axes) > 1:
        pivot.subtitle.append(f"baseline column: {_describe(axes, found[0])}")
    return found[0]


def _describe(axes: list[str], labels: _Labels) -> str:
    return ", ".join(f"{AXIS_TITLES.get(a, a)} {v}" for a, v in zip(axes, labels, strict=True))


def _compare_with_column(pivot: Pivot, baseline: _Labels) -> None:
    metric_at = pivot.column_axes.index(METRIC) if METRIC in pivot.column_axes else None
    for (row, column), cell in pivot.cells.items():
        if _identity(pivot, column) == baseline or cell.stats is None:
            continue
        moved = list(baseline)
        if metric_at is not None:
            moved.insert(metric_at, column[metric_at])
        base = pivot.cells.get((row, tuple(moved)))
        if base is not None and base.stats is not None:
            cell.comparison = compare(cell.stats, base.stats)
