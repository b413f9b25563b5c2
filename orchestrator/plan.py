"""`orch plan MATRIX`: before anything runs, will each job fit on its host's configuration, and
how long will it take?

Model shapes come from GGUF files on the coordinator (`--model NAME=PATH`) or, without one, from
what the host's worker read from its own copy (its inventory). Host memory comes from the facts
each worker detected, re-derived for a job's carve-out when the box runs in another one now.
Durations come from earlier results of the same job shape on the same host. A job whose model or
host facts are unknown gets an "unknown" verdict that says what is missing, never a guess.
A context above the model's trained length (GGUF `<arch>.context_length`) is a warning: llama.cpp
runs it, and warns of a "possible training context overflow" itself.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from jobs.modelshape import ModelShape, read_model_shape
from jobs.spec import JobSpec
from orchestrator.broker import Fleet
from orchestrator.errors import OrchError
from orchestrator.matrixfile import MatrixFile
from orchestrator.planner import (
    MemoryEstimate,
    Verdict,
    estimate,
    facts_in_configuration,
    size_text,
    verdict,
)
from orchestrator.store import Store
from orchestrator.waiting import visit_lines


@dataclass(frozen=True)
class PlanRow:
    job: JobSpec
    estimate: MemoryEstimate | None
    verdict: Verdict | None
    missing: str | None  # why there is no estimate
    shape_source: str | None = None  # "file PATH" or "reported by HOST"
    facts_note: str | None = None  # the facts were derived for another carve-out
    durations_s: tuple[float, ...] = ()  # earlier runs of the same job shape on this host
    trained_context: int | None = None  # the model's n_ctx_train, when its GGUF says

    @property
    def duration_text(self) -> str:
        if not self.durations_s:
            return "-"
        median = statistics.median(self.durations_s)
        return f"~{_seconds(median)} (n={len(self.durations_s)})"


def _seconds(value: float) -> str:
    if value < 10:
        return f"{value:.1f} s"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    return f"{value / 60:.1f} min" if value >= 120 else f"{value:.0f} s"


def parse_model_options(options: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for option in options:
        name, sep, path = option.partition("=")
        if not sep or not name or not path:
            raise OrchError(f"--model {option!r}: expected NAME=PATH (e.g. tiny:q8_0=model.gguf)")
        files[name] = Path(path).expanduser()
    return files


class _Shapes:
    """Model shapes by name: a coordinator file first, else the host's own report."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.read: dict[str, ModelShape] = {}

    def get(self, job: JobSpec, fleet: Fleet | None) -> tuple[ModelShape | None, str]:
        path = self.files.get(job.model)
        if path is not None:
            if job.model not in self.read:
                try:
                    self.read[job.model] = read_model_shape(path)
                except (OSError, ValueError, KeyError) as exc:
                    raise OrchError(
                        f"--model {job.model}={path}: not a readable GGUF ({exc})"
                    ) from exc
            return self.read[job.model], f"file {path}"
        inv = fleet.inventories.get(job.host) if fleet else None
        if inv is not None and job.model in inv.model_shapes:
            return inv.model_shapes[job.model], f"reported by {job.host}"
        if inv is None:
            return None, f"no file for {job.model}: --model NAME=PATH, or a broker with its host"
        return None, f"{job.host} reports no GGUF shape for {job.model}: --model NAME=PATH"


def plan(
    jobs: list[JobSpec],
    model_files: dict[str, Path],
    fleet: Fleet | None,
    store: Store | None = None,
) -> list[PlanRow]:
    shapes = _Shapes(model_files)
    durations = store.durations() if store is not None else {}
    rows = []
    # A matrix asks for each (model, context) many times (hosts, workloads, settings): the
    # estimate, a sum over the model's layers, is made once per pair. Shapes live in the
    # fleet or `shapes` for the whole call, so id() names one.
    estimates: dict[tuple[int, int], MemoryEstimate] = {}
    for job in jobs:
        earlier = tuple(durations.get(Store.shape_key(job), ())) if durations else ()
        shape, source = shapes.get(job, fleet)
        if shape is None:
            rows.append(PlanRow(job, None, None, source, durations_s=earlier))
            continue
        key = (id(shape), job.context)
        est = estimates.get(key) or estimates.setdefault(key, estimate(shape, job.context))
        inv = fleet.inventories.get(job.host) if fleet else None
        facts, note = (None, None)
        if inv is not None and inv.facts is not None:
            facts, note = facts_in_configuration(inv.facts, job.configuration)
        rows.append(
            PlanRow(
                job, est, verdict(est, facts), None, source, note, earlier, shape.context_length
            )
        )
    return rows


def context_warnings(mf: MatrixFile, rows: list[PlanRow]) -> list[str]:
    """Contexts above a job's model's trained context length, each at the file and line of the
    context value: llama.cpp runs them (warning "n_ctx_seq > n_ctx_train -- possible training
    context overflow"), and what they measure is past what the model was trained for."""
    sources: dict[tuple[str, int, str, int], list[str]] = {}
    for row in rows:
        trained, job = row.trained_context, row.job
        if trained is None or job.context <= trained:
            continue
        key = (mf.where_value("context", job.context), job.context, job.model, trained)
        found = sources.setdefault(key, [])
        if row.shape_source and row.shape_source not in found:
            found.append(row.shape_source)
    return [
        f"{where}: context {context} is above {model}'s trained context length of {trained} "
        f"tokens (GGUF <arch>.context_length, {', '.join(found)}): llama.cpp warns of a "
        "possible training context overflow"
        for (where, context, model, trained), found in sources.items()
    ]


def render_plan(rows: list[PlanRow], fleet: Fleet | None = None) -> str:
    table = []
    notes: dict[str, None] = {}
    # Axes that tell jobs of one host, model and context apart, when the matrix has them.
    extra = [a for a in ("workload", "gpu_layers") if any(a in r.job.axes() for r in rows)]
    for row in rows:
        job = row.job
        config = _config_label(job)
        axes = job.axes()
        where = [job.host, job.model, job.context, *(axes.get(a, "-") for a in extra), config]
        if row.estimate is None or row.verdict is None:
            table.append([*where, "-", "-", "-", row.missing, row.duration_text])
            continue
        est = row.estimate
        verdict_text = row.verdict.text()
        if row.facts_note:
            verdict_text += " *"
            notes[f"{job.host} {config}: {row.facts_note}"] = None
        table.append(
            [
                *where,
                size_text(est.weight_bytes), size_text(est.kv_bytes), size_text(est.total_bytes),
                verdict_text, row.duration_text,
            ]
        )  # fmt: skip
    headers = [
        "host", "model", "context", *extra, "configuration", "weights", "KV cache", "total",
        "verdict", "estimated duration",
    ]  # fmt: skip
    legend = [
        "Estimates from GGUF metadata (weights, KV cache at the context, compute buffer); host "
        "memory from each worker's detected facts. Estimated duration: median wall time of "
        "earlier runs of the same job on the same host (n runs); '-' when there were none.",
        *(f"* {note}" for note in notes),
    ]
    out = tabulate(table, headers, tablefmt="simple", disable_numparse=True)
    return (
        out
        + "\n\n"
        + "\n".join(legend + visit_lines([r.job for r in rows], fleet.inventories if fleet else {}))
    )


def _config_label(job: JobSpec) -> str:
    parts = [job.config_name] if job.config_name else []
    parts += [f"{v}" for v in job.configuration.values()]
    parts += [f"{k}={v}" for k, v in job.settings.items()]
    return " ".join(parts) or "-"
