"""Tidy exports: one row per job, every axis and figure a column (CSV, JSON for pandas), and
`llama-bench-json`, the objects `llama-bench -o json` prints, for scripts that already read it.

Example::

    import pandas as pd
    df = pd.read_json(io.StringIO(render(pivot, "json")))   # or pd.read_csv
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from typing import Any

from jobs.result import LLAMA_BENCH_DETAIL_FIELDS, Measurement, RunResult, Status
from orchestrator.report.metrics import LOAD_METRIC_LIST, METRIC_LIST, METRICS, power_source
from orchestrator.report.pivot import Pivot, Record
from orchestrator.stats import summarize

# Metrics that have tidy columns of their own before these (kept for existing readers).
_OWN_COLUMNS = {"tg", "pp", "ttft", "load"}


def tidy_rows(pivot: Pivot) -> list[dict[str, Any]]:
    """One row per job, every axis and figure a column (for pandas and spreadsheets)."""
    return [_tidy_row(pivot.campaign, record) for record in pivot.records]


def _tidy_row(campaign: str, record: Record) -> dict[str, Any]:
    row, result = record.job, record.job.result
    out: dict[str, Any] = {"campaign": campaign, "job_id": row.spec.job_id}
    out.update(record.axes)
    out["repetitions"] = row.spec.repetitions
    out["status"] = record.status
    out["attempt"] = result.attempt if result else None
    ok = result if result is not None and result.status is Status.OK else None
    for test in ("tg", "pp"):
        m = ok.measurement(test) if ok else None
        s = summarize(m.samples_ts) if m else None
        out[f"{test}_n"] = s.n if s else None
        out[f"{test}_tokens_per_s_median"] = s.median if s else None
        out[f"{test}_tokens_per_s_mad"] = s.mad if s else None
        out[f"{test}_tokens_per_s_samples"] = m.samples_ts if m else None
        out[f"{test}_depth"] = m.n_depth if m else None
    ttft = summarize(METRICS["ttft"].values(ok)) if ok else None  # the table's TTFT samples
    out["ttft_s_median"] = ttft.median if ttft else None
    out["ttft_s_mad"] = ttft.mad if ttft else None
    out["load_time_s"] = result.load_time_s if result else None
    engine = result.engine if result else None
    out["build_commit"] = engine.build_commit if engine else None
    out["error"] = result.error if result else None
    # Load figures are columns of load jobs only: other campaigns' exports stay as they were.
    load = row.spec.workload.load is not None
    for metric in METRIC_LIST:
        if metric.key not in _OWN_COLUMNS and (load or metric not in LOAD_METRIC_LIST):
            values = metric.values(ok) if ok else []
            out[metric.column] = statistics.median(values) if values else None
    if load:  # n of the load figures: one LoadSummary per repetition
        out["load_runs"] = len(ok.load.runs) if ok and ok.load else None
    out["power_source"] = power_source(ok) if ok else None
    # What the tables mark: a disturbed run (no verdict drawn from it) and how far the
    # backend label was checked against what the engine reported.
    disturbance = result.disturbance if result else None
    out["disturbed"] = disturbance.disturbed if disturbance else None
    out["disturbance_reasons"] = "; ".join(disturbance.reasons) if disturbance else None
    check = result.backend_check if result else None
    out["backend_verdict"] = check.verdict if check else None
    return out


def render_tidy(pivot: Pivot, fmt: str) -> str:
    records = tidy_rows(pivot)
    if fmt == "json":
        return json.dumps(records, indent=2, default=str, ensure_ascii=False)
    buf = io.StringIO()
    if records:
        # Jobs may carry different axes (power_limit_w on some only): every key, first seen first.
        fields = list(dict.fromkeys(k for record in records for k in record))
        writer = csv.DictWriter(buf, fieldnames=fields, restval="")
        writer.writeheader()
        for record in records:
            writer.writerow(
                {k: json.dumps(v) if isinstance(v, list) else v for k, v in record.items()}
            )
    return buf.getvalue()


def llama_bench_objects(pivot: Pivot) -> list[dict[str, Any]]:
    """One llama-bench JSON object per (ok job, test), in llama-bench's own field names.

    Fields llama-bench prints that orch did not keep are left out rather than invented, and
    `samples_ns`/`avg_ns`/`stddev_ns` are null for engines that did not measure them (servers);
    orch's own fields (`orch_*`) let `orch import llama-bench` give the runs their names back.
    """
    objects = []
    for record in pivot.records:
        result = record.job.result
        if result is None or result.status is not Status.OK:
            continue
        for m in result.measurements:
            objects.append(_bench_object(pivot.campaign, record, result, m))
    return objects


def _bench_object(
    campaign: str, record: Record, result: RunResult, m: Measurement
) -> dict[str, Any]:
    engine = result.engine
    details = engine.details if engine else {}
    # Only what was measured: a server engine times requests, not llama-bench's test windows,
    # so it has no samples_ns and none is made up from its rate.
    samples_ns = list(m.samples_ns)
    spec = record.job.spec
    obj: dict[str, Any] = {
        "build_commit": engine.build_commit if engine else None,
        "build_number": engine.build_number if engine else None,
    }
    obj.update({k: details[k] for k in LLAMA_BENCH_DETAIL_FIELDS if k in details})
    obj.update(
        {
            "n_prompt": m.n_prompt,
            "n_gen": m.n_gen,
            "n_depth": m.n_depth,
            "test_time": details.get("test_time") or result.started_at.isoformat(),
            "avg_ns": round(statistics.mean(samples_ns)) if samples_ns else None,
            "stddev_ns": _stdev_ns(samples_ns),
            "avg_ts": statistics.mean(m.samples_ts) if m.samples_ts else None,
            "stddev_ts": statistics.stdev(m.samples_ts) if len(m.samples_ts) > 1 else 0.0,
            "samples_ns": samples_ns or None,
            "samples_ts": m.samples_ts,
            "orch_campaign": campaign,
            "orch_job_id": result.job_id,
            "orch_host": result.host,
            "orch_engine": spec.engine,
            "orch_model": spec.model,
            "orch_backend": spec.backend,
            "orch_context": spec.context,
            "orch_workload": spec.workload.model_dump(mode="json"),
            "orch_configuration": spec.configuration,
            "orch_settings": spec.settings,
            "orch_config_name": spec.config_name,
        }
    )
    return obj


def _stdev_ns(samples_ns: list[int]) -> int | None:
    if not samples_ns:
        return None
    return round(statistics.stdev(samples_ns)) if len(samples_ns) > 1 else 0


def render_llama_bench_json(pivot: Pivot) -> str:
    return json.dumps(llama_bench_objects(pivot), indent=2, ensure_ascii=False)
