"""`orch plan MATRIX`: before anything runs, will each job fit on its host's configuration?

Model files are read on the coordinator (`--model NAME=PATH`, GGUF metadata only); host memory
comes from the fingerprint each worker published. A job whose model file or host facts are
unknown gets an "unknown" verdict that says what is missing, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from jobs.spec import JobSpec
from orchestrator.broker import Fleet
from orchestrator.errors import OrchError
from orchestrator.matrixfile import MatrixFile
from orchestrator.planner import MemoryEstimate, ModelShape, Verdict, estimate, model_shape, verdict

_GB = 1e9


def size(n_bytes: int) -> str:
    """GB (10^9, as model files are quoted) from 1 GB up; MiB below, as llama.cpp logs them."""
    return f"{n_bytes / _GB:.1f} GB" if n_bytes >= _GB else f"{n_bytes / 2**20:.2f} MiB"


@dataclass(frozen=True)
class PlanRow:
    job: JobSpec
    estimate: MemoryEstimate | None
    verdict: Verdict | None
    missing: str | None  # why there is no estimate


def parse_model_options(options: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for option in options:
        name, sep, path = option.partition("=")
        if not sep or not name or not path:
            raise OrchError(f"--model {option!r}: expected NAME=PATH (e.g. tiny:q8_0=model.gguf)")
        files[name] = Path(path).expanduser()
    return files


def plan(mf: MatrixFile, model_files: dict[str, Path], fleet: Fleet | None) -> list[PlanRow]:
    shapes: dict[str, ModelShape] = {}
    rows = []
    for job in mf.jobs:
        path = model_files.get(job.model)
        if path is None:
            rows.append(PlanRow(job, None, None, f"no file for {job.model}: --model NAME=PATH"))
            continue
        if job.model not in shapes:
            try:
                shapes[job.model] = model_shape(path)
            except (OSError, ValueError, KeyError) as exc:
                raise OrchError(f"--model {job.model}={path}: not a readable GGUF ({exc})") from exc
        est = estimate(shapes[job.model], job.context)
        inv = fleet.inventories.get(job.host) if fleet else None
        rows.append(PlanRow(job, est, verdict(est, inv.facts if inv else None), None))
    return rows


def render_plan(rows: list[PlanRow]) -> str:
    table = []
    for row in rows:
        job = row.job
        config = job.configuration.get("vram_split", "-")
        if row.estimate is None or row.verdict is None:
            table.append([job.host, job.model, job.context, config, "-", "-", "-", row.missing])
            continue
        est = row.estimate
        table.append(
            [
                job.host, job.model, job.context, config,
                size(est.weight_bytes), size(est.kv_bytes), size(est.total_bytes),
                row.verdict.text(),
            ]
        )  # fmt: skip
    headers = ["host", "model", "context", "vram", "weights", "KV cache", "total", "verdict"]
    legend = (
        "Estimates from GGUF metadata (weights, KV cache at the context, compute buffer); "
        "host memory from each worker's detected facts."
    )
    return tabulate(table, headers, tablefmt="simple", disable_numparse=True) + "\n\n" + legend
