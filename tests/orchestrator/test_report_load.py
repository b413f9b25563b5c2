"""Serving-under-load figures in reports: table, tidy exports, compare verdicts, HTML charts.

A fixed campaign, stored and read back: one mini-PC serving with llama-server on Vulkan and
ROCm, a concurrency sweep (named workloads c1, c2, c4) with 5 repetitions each. Every figure is
exact (no randomness): Vulkan's throughput is higher and its TTFT lower at every level.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobs import load as lm
from jobs.load import ClientCheck, Distribution, LoadResult, LoadRun, LoadSummary
from jobs.result import EngineInfo, Measurement, RunResult, Status
from jobs.spec import JobSpec, Workload
from orchestrator.report import PivotOptions, build_pivot, cell_text, render
from orchestrator.report.compare import compare_within, regressions
from orchestrator.report.metrics import LOAD_METRIC_LIST, METRICS
from orchestrator.stats import Verdict
from orchestrator.store import JobRow, Store

CAMPAIGN = "serve"
HOST = "minipc"
STARTED = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)
LEVELS = (1, 2, 4)
# backend -> (throughput at one user in tokens/s, TTFT p90 at one user in s)
BASE = {"vulkan": (40.0, 0.20), "rocm": (30.0, 0.30)}
WOBBLE = (0.0, 0.01, -0.01, 0.02, -0.02)  # 5 repetitions, fixed


def _dist(p50: float, spread: float = 0.5) -> Distribution:
    """Percentiles in order: p50 < p90 < p99, as a real sample's would be."""
    return Distribution(
        n=16, mean=p50, min=p50 * 0.5, p50=p50, p90=p50 * (1 + spread),
        p99=p50 * (1 + 2 * spread), max=p50 * 3,
    )  # fmt: skip


def _summary(backend: str, users: int, wobble: float) -> LoadSummary:
    tput1, ttft1 = BASE[backend]
    throughput = tput1 * users**0.8 * (1 + wobble)  # more users: more in all, less each
    ttft_p50 = ttft1 / 1.5 * users * (1 - wobble)
    return LoadSummary(
        mode="closed", concurrency=users, slots=users, requests=16, ok=16, errors=0,
        window_s=16 * 64 / throughput, request_throughput=throughput / 64, throughput=throughput,
        prompt_tokens=16 * 128, output_tokens=16 * 64, ttft_s=_dist(ttft_p50),
        itl_s=_dist(users / tput1 * (1 - wobble), 0.2), e2e_s=_dist(64 * users / tput1),
        tps_per_user=_dist(throughput / users, 0.1), good=16, goodput=throughput / 64,
    )  # fmt: skip


def _spec(backend: str, users: int, name: str | None = None) -> JobSpec:
    return JobSpec(
        campaign=CAMPAIGN, host=HOST, engine="llama-server", model="tiny", backend=backend,
        context=4096, workload_name=name or f"c{users}",
        workload=Workload(prompt_tokens=128, gen_tokens=64,
                          load={"concurrency": users, "requests": 16}),  # type: ignore[arg-type]
        repetitions=len(WOBBLE), timeout_s=600,
    )  # fmt: skip


def _result(job: JobSpec) -> RunResult:
    users = job.workload.load.concurrency if job.workload.load else None
    assert users is not None
    check = ClientCheck(wall_s=10.0, loop_cpu_s=0.5, process_cpu_s=0.7, loop_cpu_fraction=0.05)
    runs = [LoadRun(summary=_summary(job.backend, users, w), client=check) for w in WOBBLE]
    return RunResult(
        job_id=job.job_id, campaign=job.campaign, host=job.host, queue=job.queue, attempt=1,
        status=Status.OK, engine=EngineInfo(name="llama-server", backend=job.backend,
                                            binary="llama-server"),
        started_at=STARTED, finished_at=STARTED + timedelta(minutes=2), worker_version="0.1.0",
        job=job, load=LoadResult(endpoint="/v1/completions", slots=users, runs=runs),
    )  # fmt: skip


def _store(path: Path, *extra: JobRow) -> Store:
    store = Store.open(path / "orch.db")
    store.record_campaign(CAMPAIGN, "matrix.yaml", "")
    rows = [JobRow(_spec(b, u), _result(_spec(b, u))) for b in BASE for u in LEVELS]
    for row in [*rows, *extra]:
        store.record_job(row.spec)
        if row.result is not None:
            store.upsert_result(row.result)
    return store


def test_load_metrics_are_named_once_in_jobs_load() -> None:
    assert {m.key for m in LOAD_METRIC_LIST} == set(lm.LOAD_METRICS) - {lm.REQUEST_THROUGHPUT}
    assert all(METRICS[m.key] is m for m in LOAD_METRIC_LIST)
    # Direction: more per second is better, more seconds or errors worse.
    for key in (lm.THROUGHPUT, lm.TPS_PER_USER, lm.GOODPUT):
        assert METRICS[key].regression == "down"
    for key in (lm.TTFT_P50, lm.TTFT_P90, lm.TTFT_P99, lm.ITL_P50, lm.ITL_P99, lm.E2E_P90,
                lm.ERRORS):  # fmt: skip
        assert METRICS[key].regression == "up"


def test_report_shows_the_sweep_as_a_concurrency_axis(tmp_path: Path) -> None:
    store = _store(tmp_path)
    pivot = build_pivot(CAMPAIGN, store.campaign_jobs(CAMPAIGN))
    # The sweep's workloads differ only by level: one workload, concurrency a row axis.
    assert pivot.constant_axes["workload"] == "128+64, 16 requests"
    assert "concurrency" in pivot.row_axes and "workload" not in pivot.row_axes
    assert pivot.column_axes == ["host"] or "backend" in pivot.row_axes
    shown = [m.key for m in pivot.metrics]
    assert lm.THROUGHPUT in shown and lm.TTFT_P90 in shown and "tg" not in shown
    assert lm.ERRORS in shown  # zero errors is a figure, shown as 0, never hidden
    row = next(r for r in pivot.rows if "vulkan" in r and 4 in r and lm.THROUGHPUT in r)
    cell = pivot.cell(row, (HOST,))
    assert cell is not None and cell.stats is not None
    assert cell.stats.n == len(WOBBLE)  # n = repetitions of the load run
    assert cell.stats.median == pytest.approx(40.0 * 4**0.8)
    assert cell_text(cell).endswith(f"n={len(WOBBLE)}")
    md = render(pivot, "md")
    assert "concurrency (users)" in md and "throughput (tokens/s, all users)" in md


def test_tidy_exports_have_load_columns_for_load_jobs_only(tmp_path: Path) -> None:
    store = _store(tmp_path)
    plain = JobSpec(
        campaign=CAMPAIGN, host=HOST, engine="llama-server", model="tiny", backend="vulkan",
        context=4096, workload=Workload(prompt_tokens=128, gen_tokens=64), repetitions=5,
        timeout_s=600,
    )  # fmt: skip
    store.record_job(plain)
    pivot = build_pivot(CAMPAIGN, store.campaign_jobs(CAMPAIGN))
    rows = json.loads(render(pivot, "json"))
    by_job = {r["job_id"]: r for r in rows}
    assert "throughput_tokens_per_s" not in by_job[plain.job_id]
    load_row = by_job[_spec("rocm", 2).job_id]
    assert load_row["concurrency"] == 2
    assert load_row["load_runs"] == len(WOBBLE)
    assert load_row["throughput_tokens_per_s"] == pytest.approx(30.0 * 2**0.8)
    assert load_row["ttft_p90_s"] == pytest.approx(0.30 / 1.5 * 2 * 1.5)
    assert load_row["errors_requests"] == 0
    table = list(csv.DictReader(io.StringIO(render(pivot, "csv"))))
    csv_row = next(r for r in table if r["job_id"] == _spec("rocm", 2).job_id)
    assert float(csv_row["tps_per_user_tokens_per_s"]) == pytest.approx(30.0 * 2**0.8 / 2)


def test_compare_gives_verdicts_in_each_metrics_direction(tmp_path: Path) -> None:
    store = _store(tmp_path)
    options = PivotOptions(metrics=(lm.THROUGHPUT, lm.TTFT_P90, lm.TPS_PER_USER))
    pivot = compare_within(store, CAMPAIGN, "backend=rocm", "backend=vulkan", options)
    verdicts = {}
    for row in pivot.rows:
        cell = pivot.cell(row, ("backend=vulkan",))
        assert cell is not None and cell.comparison is not None
        verdicts[row] = cell.comparison.verdict
    assert len(verdicts) == len(LEVELS) * 3
    for row, verdict in verdicts.items():
        # Vulkan: more tokens/s in all and per user (UP), a shorter TTFT (DOWN).
        assert verdict is (Verdict.DOWN if lm.TTFT_P90 in row else Verdict.UP), row
    table = render(pivot, "table")
    assert "× faster" in table and "× slower" not in table
    assert regressions(pivot, 5.0) == []
    # The other way round every cell is a real regression, in both directions of goodness.
    back = compare_within(store, CAMPAIGN, "backend=vulkan", "backend=rocm", options)
    found = regressions(back, 5.0)
    assert len(found) == len(LEVELS) * 3
    assert any("TTFT p90" in str(r) for r in found) and any("throughput" in str(r) for r in found)


def _kinds(html: str) -> list[str]:
    return re.findall(r'<figure class="chart" id="[^"]+" data-kind="([^"]+)"', html)


def test_html_draws_the_load_charts_with_one_curve_per_configuration(tmp_path: Path) -> None:
    store = _store(tmp_path)
    html = render(build_pivot(CAMPAIGN, store.campaign_jobs(CAMPAIGN)), "html")
    assert _kinds(html) == ["load", "load-users"]
    assert "throughput (tokens/s, all users) vs TTFT p90 (s)" in html
    assert "tokens/s per user vs concurrency" in html
    assert f"n={len(WOBBLE)} runs per point" in html
    # `--metrics throughput,itl_p99` puts ITL p99 on the x axis.
    options = PivotOptions(metrics=(lm.THROUGHPUT, lm.ITL_P99))
    html_itl = render(build_pivot(CAMPAIGN, store.campaign_jobs(CAMPAIGN), options), "html")
    assert "throughput (tokens/s, all users) vs ITL p99 (s)" in html_itl
    # Same data, same bytes (fixed hash salt, no date).
    assert render(build_pivot(CAMPAIGN, store.campaign_jobs(CAMPAIGN)), "html") == html


def test_curves_are_the_configurations() -> None:
    from orchestrator.report.load_charts import _curves
    from orchestrator.report.pivot import campaign_axes

    rows = [JobRow(_spec(b, u), _result(_spec(b, u))) for b in BASE for u in LEVELS]
    pivot = build_pivot(CAMPAIGN, rows)
    curves = _curves(pivot.records)
    assert [c.name for c in curves] == ["rocm", "vulkan"]
    assert all(sorted(c.points) == [1.0, 2.0, 4.0] for c in curves)
    assert all(len(s) == len(WOBBLE) for c in curves for s in c.points.values())
    assert len(campaign_axes([r.spec for r in rows])) == len(rows)


def test_no_load_chart_without_load_runs(tmp_path: Path) -> None:
    job = JobSpec(
        campaign="plain", host=HOST, engine="llama-server", model="tiny", backend="vulkan",
        context=4096, workload=Workload(prompt_tokens=128, gen_tokens=64), repetitions=3,
        timeout_s=600,
    )  # fmt: skip
    result = RunResult(
        job_id=job.job_id, campaign=job.campaign, host=job.host, queue=job.queue, attempt=1,
        status=Status.OK, started_at=STARTED, finished_at=STARTED, worker_version="0.1.0",
        job=job, measurements=[Measurement(test="tg", n_prompt=0, n_gen=64,
                                           samples_ts=[40.0, 41.0, 39.0])],
    )  # fmt: skip
    html = render(build_pivot("plain", [JobRow(job, result)]), "html")
    assert "load" not in _kinds(html) and "load-users" not in _kinds(html)
    # A load job that failed has no runs: no chart either, and its cells say why.
    failed = _result(_spec("rocm", 1)).model_copy(
        update={"status": Status.ERROR, "load": None, "error": "boom"}
    )
    html = render(build_pivot(CAMPAIGN, [JobRow(_spec("rocm", 1), failed)]), "html")
    assert _kinds(html) == []


def test_a_workload_name_that_carries_more_than_the_level_stays(tmp_path: Path) -> None:
    """Two workloads at one level that differ only in their names are kept apart by name."""
    twins = []
    for name in ("a", "b"):
        spec = _spec("rocm", 2, name)
        twins.append(JobRow(spec, _result(spec)))
    pivot = build_pivot(CAMPAIGN, twins)
    labels = {r.axes["workload"] for r in pivot.records}
    assert labels == {"a (128+64)", "b (128+64)"}


def test_the_example_sweep_is_a_concurrency_axis_per_configuration() -> None:
    from orchestrator.matrixfile import load_matrix_file
    from orchestrator.report.pivot import campaign_axes

    example = Path(__file__).resolve().parents[2] / "examples" / "load.yaml"
    jobs = load_matrix_file(example).jobs
    axes = campaign_axes(jobs)
    assert sorted({(a["configuration"], a["concurrency"]) for a in axes}) == sorted(
        (c, n) for c in ("carve-32g", "carve-512m") for n in (1, 2, 4, 8)
    )
    assert len({a["workload"] for a in axes}) == 1  # the sweep is one workload at four levels


def test_errors_rising_from_none_are_a_regression(tmp_path: Path) -> None:
    """A's load runs had no failed request, B's fail some in every run: the ratio of medians
    has no meaning from 0, but the exact test does, and a guard must not pass on it."""
    store = _store(tmp_path)
    job = _spec("vulkan", 8)
    result = _result(job)
    assert result.load is not None
    for i, run in enumerate(result.load.runs):
        run.summary = run.summary.model_copy(update={"errors": 3 + i % 2, "ok": 13})
    store.record_job(job)
    store.upsert_result(result)
    same = _spec("rocm", 8)
    store.record_job(same)
    store.upsert_result(_result(same))
    options = PivotOptions(metrics=(lm.ERRORS,))
    pivot = compare_within(store, CAMPAIGN, "backend=rocm", "backend=vulkan", options)
    row = next(r for r in pivot.rows if 8 in r)
    cell = pivot.cell(row, ("backend=vulkan",))
    assert cell is not None and cell.comparison is not None
    assert cell.comparison.verdict is Verdict.UP and cell.comparison.ratio is None
    found = regressions(pivot, 5.0)
    # Zero errors on both sides at every other level: nothing to report there.
    assert len(found) == 1, found
    assert "8" in found[0].where.split() and found[0].what == "from 0 to 3 (worse)", found
