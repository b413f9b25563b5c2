"""How `orch compare` pairs the jobs of A with those of B.

A job of A and one of B are the same configuration when they agree on every axis (host,
engine, model, backend, context, carve-out, workload, configuration parts and settings)
except the ones compared (the campaign, or the axes of `host=laptop-80w`) and the ones the user
ignores (`--ignore vram_split`: two boxes that each run their own carve-out). The report says
what it matched on and what the ignored axes held on each side.

Ignoring an axis must not pool jobs: when two jobs of one side differ only in an ignored axis
(A ran 512M and 32G, B only 32G) their cell would average two configurations, so the
comparison is refused with the jobs named, never averaged. When nothing matches, the error
names the axes that kept the sides apart, with their values, and suggests `--ignore`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import product
from typing import Any

from orchestrator.report.pivot import AXES, AXIS_TITLES, Record, ReportError, sort_key
from orchestrator.store import JobRow

COMPARED = "compared"  # the column axis: which side a job is on
BLANK = "-"
# Beyond this many pairs of distinct configurations, explain a mismatch by the axes whose
# values the sides do not share at all, instead of by the closest pairs (bounded work).
_MAX_PAIRS = 250_000

# A comma starts a new AXIS=VALUE only when one follows: a workload label may hold commas.
_NEXT_PAIR = re.compile(r",(?=\s*[A-Za-z_][\w.-]*=)")
_Key = tuple[Any, ...]
_KeyOf = Callable[[dict[str, Any]], _Key]


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its label (a campaign, or `host=laptop-80w`) and its jobs
    with their axis values (`pivot.job_axes`)."""

    label: str
    jobs: list[tuple[JobRow, dict[str, Any]]]


@dataclass(frozen=True)
class Matched:
    records: list[Record]  # axes: compared and ignored ones blanked, plus COMPARED = side label
    summary: list[str]  # lines for under the title


def split_pairs(text: str) -> list[str]:
    """`host=a,vram_split=512M` -> ["host=a", "vram_split=512M"] (for selectors and
    `--baseline`): a comma splits only before another AXIS=."""
    return [part.strip() for part in _NEXT_PAIR.split(text)]


def known_axes(axes: Iterable[dict[str, Any]]) -> list[str]:
    """The axes jobs have, in reading order: the fixed ones, then the rest by name."""
    return [*AXES, *sorted({k for a in axes for k in a} - set(AXES))]


def match(a: Side, b: Side, compared: tuple[str, ...], ignore: tuple[str, ...]) -> Matched:
    """Records for the pivot, matched on every axis but `compared` and `ignore` (see module)."""
    known = known_axes(axes for _, axes in (*a.jobs, *b.jobs))
    ignore = _check_ignore(ignore, known, compared)
    matched_on = [x for x in known if x not in compared and x not in ignore]

    def key(axes: dict[str, Any]) -> _Key:
        return tuple(axes.get(x, BLANK) for x in matched_on)

    for side in (a, b):
        _refuse_pooling(side, ignore, key, matched_on, within=bool(compared))
    keys_a = {key(axes) for _, axes in a.jobs}
    keys_b = {key(axes) for _, axes in b.jobs}
    common = keys_a & keys_b
    if not common:
        raise ReportError(_nothing_in_common(a, b, matched_on, keys_a, keys_b))
    records = [
        Record({**axes, **dict.fromkeys((*compared, *ignore), BLANK), COMPARED: side.label}, job)
        for side in (a, b)
        for job, axes in side.jobs
    ]
    shown = [x for i, x in enumerate(matched_on) if any(k[i] != BLANK for k in common)]
    line = f"matched on {', '.join(shown) or 'nothing else'}"
    if ignore:
        held = [
            f"{x} ({a.label}: {_values(a, x, key, common)}; "
            f"{b.label}: {_values(b, x, key, common)})"
            for x in ignore
        ]
        line += f"; ignored {', '.join(held)}"
    summary = [line]
    alone = [
        f"{n} configuration(s) only in {side.label}"
        for side, n in ((a, len(keys_a - common)), (b, len(keys_b - common)))
        if n
    ]
    if alone:
        summary.append(f"not matched: {', '.join(alone)} (- on the other side)")
    return Matched(records, summary)


def _check_ignore(
    ignore: tuple[str, ...], known: list[str], compared: tuple[str, ...]
) -> tuple[str, ...]:
    for axis in ignore:
        if axis not in known:
            raise ReportError(f"--ignore {axis}: no such axis (axes: {', '.join(known)})")
        if axis in compared:
            raise ReportError(f"--ignore {axis}: {axis} is what A and B compare")
    return tuple(dict.fromkeys(ignore))


def _refuse_pooling(
    side: Side, ignore: tuple[str, ...], key: _KeyOf, matched_on: list[str], *, within: bool
) -> None:
    held: dict[_Key, set[_Key]] = {}
    for _, axes in side.jobs:
        held.setdefault(key(axes), set()).add(tuple(axes.get(x, BLANK) for x in ignore))
    for where, values in held.items():
        if len(values) < 2:
            continue
        differ = {
            x: sorted({t[i] for t in values}, key=sort_key)
            for i, x in enumerate(ignore)
            if len({t[i] for t in values}) > 1
        }
        words = "; ".join(f"{x} {' and '.join(str(v) for v in vs)}" for x, vs in differ.items())
        hint = "compare without that --ignore"
        if within:  # a selector can say which of the jobs is meant
            x, vs = next(iter(differ.items()))
            hint += f", or say which on each side (e.g. {side.label},{x}={vs[0]})"
        raise ReportError(
            f"--ignore {', '.join(ignore)} would put jobs of {side.label} with {words} in one "
            f"cell ({_describe(matched_on, where)}); orch does not average different "
            f"configurations: {hint}"
        )


def _values(side: Side, axis: str, key: _KeyOf, common: set[_Key]) -> str:
    found = {axes.get(axis, BLANK) for _, axes in side.jobs if key(axes) in common}
    return ", ".join(str(v) for v in sorted(found, key=sort_key))


def _describe(axes: list[str], labels: _Key) -> str:
    pairs = zip(axes, labels, strict=True)
    return ", ".join(f"{AXIS_TITLES.get(x, x)} {v}" for x, v in pairs if v != BLANK)


def _nothing_in_common(
    a: Side, b: Side, axes: list[str], keys_a: set[_Key], keys_b: set[_Key]
) -> str:
    choices = _axes_apart(axes, keys_a, keys_b)
    apart = sorted(set().union(*choices))
    if not apart:  # only past _MAX_PAIRS: every axis shares values, no combination does
        return (
            f"{b.label} and {a.label} have no configuration in common to compare: no "
            f"configuration of one agrees with one of the other on all of {', '.join(axes)}"
        )
    held = []
    for i in apart:
        va = ", ".join(str(v) for v in sorted({k[i] for k in keys_a}, key=sort_key))
        vb = ", ".join(str(v) for v in sorted({k[i] for k in keys_b}, key=sort_key))
        held.append(f"{axes[i]} ({a.label}: {va}; {b.label}: {vb})")
    flags = " or ".join(" ".join(f"--ignore {axes[i]}" for i in c) for c in choices[:3])
    return (
        f"{b.label} and {a.label} have no configuration in common to compare (matched on "
        f"{', '.join(axes)}): they differ in {'; '.join(held)}. If that difference is what "
        f"you mean to compare across, pass {flags}"
    )


def _axes_apart(axes: list[str], keys_a: set[_Key], keys_b: set[_Key]) -> list[tuple[int, ...]]:
    """The axes (indexes) in which the closest configurations of A and B differ: each way of
    making some pair match by ignoring the fewest axes, e.g. [(5,)] or [(3,), (5,)]."""
    if len(keys_a) * len(keys_b) > _MAX_PAIRS:
        # Bounded work: only the axes whose values the sides do not share at all.
        disjoint = [
            i for i in range(len(axes)) if not {k[i] for k in keys_a} & {k[i] for k in keys_b}
        ]
        return [tuple(disjoint)] if disjoint else []
    fewest, ways = len(axes) + 1, set[tuple[int, ...]]()
    for ka, kb in product(keys_a, keys_b):
        differ = tuple(i for i, (x, y) in enumerate(zip(ka, kb, strict=True)) if x != y)
        if len(differ) < fewest:
            fewest, ways = len(differ), {differ}
        elif len(differ) == fewest:
            ways.add(differ)
    return sorted(ways)
