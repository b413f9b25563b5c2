"""The comparison report: configurations as rows, hosts as columns.

Each cell is one host's figures for one configuration: text-generation (tg) tokens/s as
median ± MAD and prompt-processing (pp) tokens/s, with the number of repetitions; a failed job
shows its status in words. `render` writes the terminal table, GitHub Markdown, or tidy CSV/JSON
(one row per job, every axis and figure a column).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from jobs.result import RunResult, Status
from orchestrator.stats import Summary, fmt_number, summarize
from orchestrator.store import JobRow

FORMATS = ("table", "md", "csv", "json")
# Axes in the order a reader scans them; `host` is the column axis.
ROW_AXES = ("engine", "model", "backend", "context", "vram_split", "workload")
_AXIS_TITLES = {"vram_split": "vram", "workload": "workload (pp+tg)"}
WAITING = "waiting"
CANCELLED = "cancelled"


@dataclass
class Cell:
    """All results of one (configuration, host), pooled."""

    statuses: list[str] = field(default_factory=list)
    tg_samples: list[float] = field(default_factory=list)
    pp_samples: list[float] = field(default_factory=list)
    ttft_samples: list[float] = field(default_factory=list)  # seconds, server engines only

    @property
    def tg(self) -> Summary | None:
        return summarize(self.tg_samples)

    @property
    def pp(self) -> Summary | None:
        return summarize(self.pp_samples)

    @property
    def ttft(self) -> Summary | None:
        return summarize(self.ttft_samples)

    def text(self) -> str:
        tg, pp = self.tg, self.pp
        if tg is None and pp is None:
            failures = sorted({s for s in self.statuses if s != Status.OK.value})
            return ", ".join(_status_words(s) for s in failures) or WAITING
        parts = []
        if tg is not None:
            parts.append(f"tg {fmt_number(tg.median)} ± {fmt_number(tg.mad)}")
        if pp is not None:
            parts.append(f"pp {fmt_number(pp.median)} ± {fmt_number(pp.mad)}")
        ttft = self.ttft
        if ttft is not None:
            ms = 1000.0
            parts.append(f"ttft {fmt_number(ttft.median * ms)} ± {fmt_number(ttft.mad * ms)} ms")
        n = tg.n if tg is not None else pp.n if pp is not None else 0
        text = " · ".join(parts) + f" (n={n})"
        others = len([s for s in self.statuses if s != Status.OK.value])
        if others:
            text += f" +{others} not ok"
        return text


@dataclass
class Pivot:
    campaign: str
    shown_axes: list[str]  # axes that vary, as row labels
    constant_axes: dict[str, Any]  # axes with one value, said once above the table
    hosts: list[str]
    rows: dict[tuple[Any, ...], dict[str, Cell]]
    jobs: list[JobRow]


def _status_words(status: str) -> str:
    try:
        return Status(status).words
    except ValueError:
        return status


def _axes(row: JobRow) -> dict[str, Any]:
    spec = row.spec
    return {
        "host": spec.host,
        "engine": spec.engine,
        "model": spec.model,
        "backend": spec.backend,
        "context": spec.context,
        "vram_split": spec.configuration.get("vram_split", "-"),
        "workload": _workload_label(spec),
    }


def _workload_label(spec: Any) -> str:
    work = spec.workload
    if work.prompt_text:
        text = work.prompt_text if len(work.prompt_text) <= 24 else work.prompt_text[:23] + "…"
        prompt = f'"{text}"'
    else:
        prompt = str(work.prompt_tokens)
    return f"{prompt}+{work.gen_tokens}" + (f" +image {work.image}" if work.image else "")


def build_pivot(campaign: str, rows: list[JobRow]) -> Pivot:
    values: dict[str, list[Any]] = {axis: [] for axis in ROW_AXES}
    hosts: list[str] = []
    for row in rows:
        axes = _axes(row)
        for axis in ROW_AXES:
            if axes[axis] not in values[axis]:
                values[axis].append(axes[axis])
        if row.spec.host not in hosts:
            hosts.append(row.spec.host)
    shown = [a for a in ROW_AXES if len(values[a]) > 1 or a == "model"]
    constant = {
        a: values[a][0] for a in ROW_AXES if a not in shown and values[a] and values[a][0] != "-"
    }
    table: dict[tuple[Any, ...], dict[str, Cell]] = {}
    for row in rows:
        axes = _axes(row)
        key = tuple(axes[a] for a in shown)
        cell = table.setdefault(key, {}).setdefault(row.spec.host, Cell())
        _add(cell, row.result, row.cancelled)
    ordered = dict(sorted(table.items(), key=lambda kv: tuple(map(_sort_key, kv[0]))))
    return Pivot(campaign, shown, constant, hosts, ordered, rows)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int) else (1, str(value))


def _add(cell: Cell, result: RunResult | None, cancelled: bool = False) -> None:
    if cancelled:
        cell.statuses.append(CANCELLED)
    if result is None:
        return
    cell.statuses.append(result.status.value)
    if result.status is not Status.OK:
        return
    for m in result.measurements:
        (cell.tg_samples if m.test == "tg" else cell.pp_samples).extend(m.samples_ts)
    cell.ttft_samples.extend(r.ttft_s for r in result.requests)


def render(pivot: Pivot, fmt: str) -> str:
    if fmt in ("csv", "json"):
        return _render_tidy(pivot, fmt)
    headers = [_AXIS_TITLES.get(a, a) for a in pivot.shown_axes] + pivot.hosts
    body = [
        [*key, *(cells[h].text() if h in cells else "-" for h in pivot.hosts)]
        for key, cells in pivot.rows.items()
    ]
    done = sum(1 for r in pivot.jobs if r.result is not None)
    constants = ", ".join(f"{_AXIS_TITLES.get(k, k)} {v}" for k, v in pivot.constant_axes.items())
    legend = (
        "tg = text generation, pp = prompt processing: tokens/s, median ± MAD over n "
        "repetitions. llama-bench: the KV cache is pre-filled to context - prompt - gen tokens, "
        "so a run ends at the row's context. Server engines: ttft (time to first token) and tg "
        "measured by the client, pp from the server's own prefill timing; lmstudio: ttft and tg "
        "are LM Studio's own figures and pp is an estimate (prompt tokens / ttft)."
    )
    if fmt == "md":
        out = [f"### {pivot.campaign}", ""]
        if constants:
            out += [f"*{constants}; {done}/{len(pivot.jobs)} jobs finished*", ""]
        out += [tabulate(body, headers, tablefmt="github", disable_numparse=True), "", legend]
    else:
        out = [f"campaign {pivot.campaign}: {done}/{len(pivot.jobs)} jobs finished"]
        if constants:
            out.append(constants)
        out += ["", tabulate(body, headers, tablefmt="simple", disable_numparse=True), "", legend]
    out += _failure_notes(pivot, md=fmt == "md")
    return "\n".join(out)


def _failure_notes(pivot: Pivot, *, md: bool) -> list[str]:
    notes = []
    for row in pivot.jobs:
        result = row.result
        if result is None or result.status is Status.OK:
            continue
        # First line says what happened (exit code, timeout); the last is the engine's own word.
        lines = [line for line in (result.error or "").strip().splitlines() if line.strip()]
        reason = lines[0] if lines else ""
        if len(lines) > 1:
            reason += f": {lines[-1].strip()}"
        bullet = "- " if md else "  "
        notes.append(
            f"{bullet}{row.spec.host} {row.spec.model} ctx {row.spec.context}: "
            f"{result.status.words} (job {result.job_id}): {reason}"
        )
    return ["", "Failures:", *notes] if notes else []


def tidy_rows(pivot: Pivot) -> list[dict[str, Any]]:
    """One row per job, every axis and figure a column (for pandas and spreadsheets)."""
    out = []
    for row in pivot.jobs:
        result = row.result
        record: dict[str, Any] = {"campaign": pivot.campaign, "job_id": row.spec.job_id}
        record.update(_axes(row))
        record["repetitions"] = row.spec.repetitions
        record["status"] = (
            result.status.value if result else CANCELLED if row.cancelled else WAITING
        )
        record["attempt"] = result.attempt if result else None
        for test in ("tg", "pp"):
            m = result.measurement(test) if result else None
            s = summarize(m.samples_ts) if m else None
            record[f"{test}_n"] = s.n if s else None
            record[f"{test}_tokens_per_s_median"] = s.median if s else None
            record[f"{test}_tokens_per_s_mad"] = s.mad if s else None
            record[f"{test}_tokens_per_s_samples"] = m.samples_ts if m else None
            record[f"{test}_depth"] = m.n_depth if m else None
        ttft = summarize([r.ttft_s for r in result.requests]) if result else None
        record["ttft_s_median"] = ttft.median if ttft else None
        record["ttft_s_mad"] = ttft.mad if ttft else None
        record["load_time_s"] = result.load_time_s if result else None
        engine = result.engine if result else None
        record["build_commit"] = engine.build_commit if engine else None
        record["error"] = result.error if result else None
        out.append(record)
    return out


def _render_tidy(pivot: Pivot, fmt: str) -> str:
    records = tidy_rows(pivot)
    if fmt == "json":
        return json.dumps(records, indent=2, default=str)
    buf = io.StringIO()
    if records:
        writer = csv.DictWriter(buf, fieldnames=list(records[0]))
        writer.writeheader()
        for record in records:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in record.items()}
            )
    return buf.getvalue()
