"""`orch import llama-bench FILE --host NAME`: results you already have, as an orch campaign.

Reads what `llama-bench -o json` (an array) or `-o jsonl` (one object per line) printed: one
object per test. Tests of the same run settings (model file, backend, depth, threads, layers,
batch, cache types, ...) become one job with a pp and a tg measurement, like the jobs orch runs
itself; its context is `n_depth + n_prompt + n_gen`, the inverse of how orch's llama-bench
engine sets `-d`. Files written by `orch report --format llama-bench-json` carry `orch_*`
fields, which give the runs back their engine, model, backend, context, workload, configuration
and settings: the report of the import matches the original for the tg/pp figures (a server
engine's TTFT, requests and telemetry are not in llama-bench's format and do not come back).

A file whose tests differ only in settings a job does not name (a sweep of `-t`, `-ngl`, `-fa`,
`-ctk`, `-b`...) is refused, naming the fields: orch would record them as one job and keep one.
Split it and import each part as its own campaign. `-pg` tests (prompt and generation in one
timing) are skipped and counted: their rate is neither pp nor tg.

Importing the same file twice changes nothing (job ids are deterministic and results are
upserted by id).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from jobs.backends import check_llama_bench_row, mislabelled_error
from jobs.result import (
    LLAMA_BENCH_DETAIL_FIELDS,
    EngineInfo,
    RunResult,
    Status,
    measurement_from_llama_bench,
)
from jobs.spec import JobSpec, Workload
from jobs.version import ORCH_VERSION
from orchestrator.report.pivot import ReportError
from orchestrator.store import Store

_REQUIRED = ("n_prompt", "n_gen", "samples_ts")
# Fields that say which test an object is, not which run settings it had.
_TEST_FIELDS = {
    "n_prompt", "n_gen", "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
    "samples_ns", "samples_ts", "orch_job_id",
}  # fmt: skip
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class ImportOutcome:
    campaign: str
    jobs: int
    tests: int
    new_results: int
    skipped_pg: int = 0  # `-pg` tests (n_prompt and n_gen both > 0), not imported


def read_llama_bench(path: Path) -> list[dict[str, Any]]:
    """The test objects of a llama-bench JSON or JSONL file, checked for the fields orch needs."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc}") from exc
    stripped = text.lstrip()
    objects: list[Any]
    try:
        if stripped.startswith("["):
            objects = json.loads(text)
        else:
            objects = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{path}:{exc.lineno}: not llama-bench JSON or JSONL ({exc.msg}); "
            "make it with `llama-bench -o json` or `-o jsonl`"
        ) from exc
    if not objects:
        raise ReportError(f"{path}: no llama-bench tests in the file")
    for i, obj in enumerate(objects, 1):
        missing = [k for k in _REQUIRED if not isinstance(obj, dict) or k not in obj]
        if missing:
            raise ReportError(
                f"{path}: test {i} lacks {', '.join(missing)}: is this llama-bench output "
                "(`-o json` or `-o jsonl`)?"
            )
    return objects


def import_llama_bench(
    store: Store,
    path: Path,
    host: str | None,
    *,
    campaign: str | None = None,
    backend: str | None = None,
    model: str | None = None,
) -> ImportOutcome:
    """Record the file's tests in `store` as campaign `campaign` (default `import-FILESTEM`).

    `host` names the box the tests ran on; None takes it from the `orch_host` field of files
    orch exported.
    """
    objects = read_llama_bench(path)
    if host is None and not all(obj.get("orch_host") for obj in objects):
        raise ReportError(f"{path}: say which box ran these tests: --host NAME")
    name = campaign or "import-" + (_NOT_A_NAME.sub("-", path.stem).strip("-.") or "llama-bench")
    # A -pg test times prompt and generation together: its rate is neither pp nor tg.
    combined = [o for o in objects if int(o["n_prompt"]) > 0 and int(o["n_gen"]) > 0]
    groups: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        if obj in combined:
            continue
        settings = {k: v for k, v in obj.items() if k not in _TEST_FIELDS}
        groups.setdefault(json.dumps(settings, sort_keys=True, default=str), []).append(obj)
    if not groups:
        raise ReportError(
            f"{path}: only -pg tests (prompt and generation timed together); orch reports pp "
            "and tg separately: run llama-bench with -p and -n"
        )
    results: list[RunResult] = []
    settings_of: dict[str, dict[str, Any]] = {}
    for key, tests in groups.items():
        for pp, tg in _pairs(path, tests):
            result = _result(name, host, pp, tg, backend=backend, model=model)
            if result.job_id in settings_of:
                _refuse_sweep(path, settings_of[result.job_id], json.loads(key))
            settings_of[result.job_id] = json.loads(key)
            results.append(result)
    new = 0
    with store.transaction():
        store.record_campaign(name, f"llama-bench:{path}", "")
        for result in results:
            assert result.job is not None
            store.record_job(result.job)
            new += store.upsert_result(result)
    return ImportOutcome(name, len(results), len(objects), new, len(combined))


def _refuse_sweep(path: Path, one: dict[str, Any], other: dict[str, Any]) -> None:
    """Two groups of tests that would be one job: say which llama-bench settings vary."""
    fields = sorted(k for k in {*one, *other} if one.get(k) != other.get(k))
    values = "; ".join(f"{k}: {one.get(k)!r} and {other.get(k)!r}" for k in fields)
    first = fields[0] if fields else "n_threads"
    raise ReportError(
        f"{path}: tests differ in {', '.join(fields)} ({values}), which an orch job does not "
        "name, so they would be recorded as one job and all but one lost. Split the file by "
        f"those fields and import each part as its own campaign, e.g. `jq 'map(select(.{first} "
        f"== {json.dumps(one.get(first))}))' {path.name} > part.json` then `orch import "
        "llama-bench part.json --campaign NAME`"
    )


def _pairs(
    path: Path, tests: list[dict[str, Any]]
) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    """One job per (pp, tg) test pair of the same settings, as orch runs them."""
    pps = [t for t in tests if int(t["n_gen"]) == 0]
    tgs = [t for t in tests if int(t["n_gen"]) > 0]
    if len(pps) == len(tgs) or not pps or not tgs:
        n = max(len(pps), len(tgs))
        return [(pps[i] if i < len(pps) else None, tgs[i] if i < len(tgs) else None)
                for i in range(n)]  # fmt: skip
    if len(tgs) == 1:
        return [(pp, tgs[0]) for pp in pps]
    if len(pps) == 1:
        return [(pps[0], tg) for tg in tgs]
    raise ReportError(
        f"{path}: {len(pps)} prompt tests and {len(tgs)} generation tests with the same "
        "settings cannot be paired into jobs; import runs made with one -p and one -n value, "
        "or as many -p values as -n values"
    )


def _name(value: Any, fallback: str) -> str:
    text = _NOT_A_NAME.sub("-", str(value or "")).strip("-.").lower()
    return text or fallback


def _result(
    campaign: str,
    host: str | None,
    pp: dict[str, Any] | None,
    tg: dict[str, Any] | None,
    *,
    backend: str | None,
    model: str | None,
) -> RunResult:
    first = pp or tg
    assert first is not None
    prompt = int(pp["n_prompt"]) if pp else int(first["n_prompt"]) or 1
    gen = int(tg["n_gen"]) if tg else 1
    depth = int(first.get("n_depth", 0))
    model_file = str(first.get("model_filename") or "")
    workload = Workload(prompt_tokens=prompt, gen_tokens=gen, warmup_runs=0)
    try:
        if first.get("orch_workload"):
            workload = Workload.model_validate(first["orch_workload"])
        job = JobSpec(
            campaign=campaign,
            host=host or first["orch_host"],
            engine=first.get("orch_engine") or "llama-bench",
            model=model or first.get("orch_model") or _name(Path(model_file).stem, "model"),
            backend=backend
            or first.get("orch_backend")
            or _name(str(first.get("backends") or "").split(",")[0], "unknown"),
            context=int(first.get("orch_context") or depth + prompt + gen),
            workload=workload,
            repetitions=max(len(t["samples_ts"]) for t in (pp, tg) if t),
            configuration=first.get("orch_configuration") or {},
            settings=first.get("orch_settings") or {},
            config_name=first.get("orch_config_name"),
        )
    except ValidationError as exc:
        raise ReportError(f"cannot name the imported run: {exc.errors()[0]['msg']}") from exc
    when = _time(first.get("test_time"))
    details = {k: first[k] for k in LLAMA_BENCH_DETAIL_FIELDS if k in first}
    # The same rule the worker applies after a run: a file whose rows say they ran on the CPU
    # is never filed under `vulkan`, whoever named it so. Only llama-bench's own rows carry
    # that evidence (an export of a server engine's job has no `backends` field).
    check = (
        check_llama_bench_row(job.backend, first)
        if job.engine == "llama-bench" and "backends" in first
        else None
    )
    mislabelled = mislabelled_error(check) if check is not None else None
    return RunResult(
        job_id=job.job_id,
        campaign=campaign,
        host=job.host,
        queue=job.queue,
        attempt=1,
        status=Status.MISLABELLED if mislabelled else Status.OK,
        error=mislabelled,
        backend_check=check,
        measurements=[measurement_from_llama_bench(t) for t in (pp, tg) if t],
        engine=EngineInfo(
            name=job.engine,
            backend=job.backend,
            binary="(imported)",
            build_commit=first.get("build_commit"),
            build_number=first.get("build_number"),
            details=details,
        ),
        started_at=when,
        finished_at=when,
        worker_version=f"import (orch {ORCH_VERSION})",
        job=job,
    )


def _time(value: Any) -> datetime:
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return datetime(1970, 1, 1, tzinfo=UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)
