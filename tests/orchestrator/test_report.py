"""The comparison report and its statistics, on results shaped like real llama-bench runs."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobs.result import EngineInfo, RunResult, Status, measurement_from_llama_bench
from jobs.spec import JobSpec, Workload
from orchestrator.report import (
    Cell,
    Pivot,
    PivotOptions,
    ReportError,
    build_pivot,
    cell_text,
    render,
    tidy_rows,
)
from orchestrator.report.metrics import METRICS
from orchestrator.report.render_text import table
from orchestrator.stats import Summary, fmt_number, summarize
from orchestrator.store import JobRow

CAMPAIGN = "halo-vs-laptop"
WORKLOAD = Workload(prompt_tokens=64, gen_tokens=32)
BUILD_COMMIT = "4227c9be"
STARTED = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

# tg / pp tokens/s per repetition (3 repetitions), per (host, model, context).
TG = {
    ("laptop-80w", "tiny:q8_0", 512): [43.1, 42.8, 43.5],
    ("laptop-80w", "tiny:q8_0", 2048): [40.2, 41.0, 39.9],
    ("laptop-80w", "tiny:q4_k_m", 512): [61.5, 60.7, 61.9],
    ("minipc-120w", "tiny:q8_0", 2048): [47.6, 47.1, 48.0],
}
PP = {
    ("laptop-80w", "tiny:q8_0", 512): [812.4, 798.0, 805.3],
    ("laptop-80w", "tiny:q8_0", 2048): [760.0, 771.5, 752.25],
    ("laptop-80w", "tiny:q4_k_m", 512): [655.0, 649.5, 661.0],
    ("minipc-120w", "tiny:q8_0", 2048): [901.0, 897.5, 905.0],
}


def _spec(host: str, model: str, context: int) -> JobSpec:
    return JobSpec(
        campaign=CAMPAIGN,
        host=host,
        engine="llama-bench",
        model=model,
        backend="cpu",
        context=context,
        configuration={"vram_split": "32G"},
        workload=WORKLOAD,
        repetitions=3,
        timeout_s=600,
    )


def _bench_test(spec: JobSpec, test: str, samples_ts: list[float]) -> dict[str, Any]:
    """One object of `llama-bench -o json` output (the fields docs/facts.md lists)."""
    n_prompt = spec.workload.prompt_tokens if test == "pp" else 0
    n_gen = spec.workload.gen_tokens if test == "tg" else 0
    samples_ns = [round((n_prompt + n_gen) / ts * 1e9) for ts in samples_ts]
    avg_ns = sum(samples_ns) // len(samples_ns)
    avg_ts = sum(samples_ts) / len(samples_ts)
    return {
        "build_commit": BUILD_COMMIT,
        "build_number": 6123,
        "cpu_info": "AMD RYZEN AI MAX+ 395 w/ Radeon 8060S",
        "gpu_info": "",
        "backends": "CPU",
        "model_filename": f"/models/{spec.model.replace(':', '-')}.gguf",
        "model_type": "llama ?B Q8_0",
        "model_size": 4_718_592,
        "model_n_params": 4_456_704,
        "n_batch": 2048,
        "n_ubatch": 512,
        "n_threads": 16,
        "type_k": "f16",
        "type_v": "f16",
        "n_gpu_layers": 99,
        "flash_attn": False,
        "use_mmap": True,
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "n_depth": spec.context - spec.workload.prompt_tokens - spec.workload.gen_tokens,
        "test_time": "2025-03-01T12:00:05Z",
        "avg_ns": avg_ns,
        "stddev_ns": 0,
        "avg_ts": avg_ts,
        "stddev_ts": 0.0,
        "samples_ns": samples_ns,
        "samples_ts": samples_ts,
    }


def _result(
    spec: JobSpec,
    status: Status = Status.OK,
    *,
    error: str | None = None,
    attempt: int = 1,
) -> RunResult:
    key = (spec.host, spec.model, spec.context)
    rows = (
        [_bench_test(spec, "pp", PP[key]), _bench_test(spec, "tg", TG[key])]
        if status is Status.OK
        else []
    )
    return RunResult(
        job_id=spec.job_id,
        campaign=spec.campaign,
        host=spec.host,
        queue=spec.queue,
        attempt=attempt,
        status=status,
        error=error,
        measurements=[measurement_from_llama_bench(r) for r in rows],
        engine=EngineInfo(
            name="llama-bench",
            backend="cpu",
            binary="/opt/llama.cpp/bin/llama-bench",
            build_commit=BUILD_COMMIT if rows else None,
            build_number=6123 if rows else None,
            details={"cpu_info": rows[0]["cpu_info"]} if rows else {},
        ),
        declared={"form_factor": "laptop", "vram_split": "32G"},
        argv=["llama-bench", "-m", "model.gguf", "-o", "json"],
        started_at=STARTED,
        finished_at=STARTED + timedelta(seconds=7),
        worker_version="0.1.0",
        job=spec,
    )


LOAD_ERROR = (
    "exit code 1\n"
    "llama_model_load: error loading model: unable to allocate CPU buffer\n"
    "main: error: failed to load model '/models/tiny-q4_k_m.gguf'"
)
TIMEOUT_ERROR = "killed after 600 s\nllama_kv_cache: size = 8.00 MiB"


def _campaign_rows() -> list[JobRow]:
    """Two hosts x two models x two contexts: 4 ok, 1 load failure, 1 timeout, 2 waiting."""
    rows = []
    for host in ("laptop-80w", "minipc-120w"):
        for model in ("tiny:q8_0", "tiny:q4_k_m"):
            for context in (2048, 512):  # submitted out of order: the report sorts
                spec = _spec(host, model, context)
                key = (host, model, context)
                if key in TG:
                    result: RunResult | None = _result(spec)
                elif key == ("laptop-80w", "tiny:q4_k_m", 2048):
                    result = _result(spec, Status.LOAD_FAILED, error=LOAD_ERROR)
                elif key == ("minipc-120w", "tiny:q4_k_m", 2048):
                    result = _result(spec, Status.TIMEOUT, error=TIMEOUT_ERROR, attempt=2)
                else:
                    result = None
                rows.append(JobRow(spec, result))
    return rows


def _job_id(host: str, model: str, context: int) -> str:
    return _spec(host, model, context).job_id


# -- statistics ------------------------------------------------------------------------------


def test_summarize_odd_count() -> None:
    assert summarize([10.0, 12.0, 11.0]) == Summary(
        n=3, median=11.0, mad=1.0, minimum=10.0, maximum=12.0
    )


def test_summarize_even_count_and_an_outlier() -> None:
    # median 11.5; deviations 1.5, 0.5, 0.5, 38.5 -> MAD 1.0: the outlier barely moves it.
    summary = summarize([10.0, 12.0, 11.0, 50.0])

    assert summary == Summary(n=4, median=11.5, mad=1.0, minimum=10.0, maximum=50.0)


def test_summarize_single_sample() -> None:
    assert summarize([42.5]) == Summary(n=1, median=42.5, mad=0.0, minimum=42.5, maximum=42.5)


def test_summarize_empty_is_none() -> None:
    assert summarize([]) is None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (805.3, "805"),
        (1234.4, "1234"),
        (100.0, "100"),
        (43.14, "43.1"),
        (10.0, "10.0"),
        (9.876, "9.88"),
        (0.3, "0.30"),
        (0.1, "0.10"),
        (0.0345, "0.0345"),
        (0.003456, "0.00346"),
        (-0.0021, "-0.00210"),
        (0.0, "0.00"),
        (-12.34, "-12.3"),
        (123456789.0, "123456789"),  # never 1.23e+08
    ],
)
def test_fmt_number(value: float, text: str) -> None:
    assert fmt_number(value) == text


@pytest.mark.parametrize(("value", "text"), [(99.96, "100"), (9.996, "10.0")])
def test_fmt_number_at_a_rounding_boundary(value: float, text: str) -> None:
    assert fmt_number(value) == text


# -- pivot -----------------------------------------------------------------------------------


def _texts(pivot: Pivot) -> dict[tuple[Any, ...], dict[str, str]]:
    """Row key -> {column label: cell text}."""
    return {
        row: {" ".join(map(str, c)): cell_text(pivot.cell(row, c)) for c in pivot.columns}
        for row in pivot.rows
    }


def test_default_pivot_has_hosts_as_columns_and_metrics_as_rows() -> None:
    pivot = build_pivot(CAMPAIGN, _campaign_rows())

    assert pivot.campaign == CAMPAIGN
    assert pivot.column_axes == ["host"]
    assert pivot.columns == [("laptop-80w",), ("minipc-120w",)]
    assert pivot.row_axes == ["model", "context", "metric"]
    assert pivot.constant_axes == {
        "engine": "llama-bench",
        "backend": "cpu",
        "vram_split": "32G",
        "workload": "64+32",
    }
    # Sorted by model, then context as a number (512 before 2048), then metric (tg, pp).
    assert pivot.rows == [
        ("tiny:q4_k_m", 512, "tg"),
        ("tiny:q4_k_m", 512, "pp"),
        ("tiny:q4_k_m", 2048, "tg"),
        ("tiny:q4_k_m", 2048, "pp"),
        ("tiny:q8_0", 512, "tg"),
        ("tiny:q8_0", 512, "pp"),
        ("tiny:q8_0", 2048, "tg"),
        ("tiny:q8_0", 2048, "pp"),
    ]
    assert [m.key for m in pivot.metrics] == ["tg", "pp"]  # the metrics that have figures
    assert len(pivot.jobs) == 8


def test_cell_texts() -> None:
    texts = _texts(build_pivot(CAMPAIGN, _campaign_rows()))

    assert texts == {
        # tg 60.7 61.5 61.9: median 61.5 and the range; no CI below 6 samples
        ("tiny:q4_k_m", 512, "tg"): {
            "laptop-80w": "61.5 (60.7–61.9) n=3",
            "minipc-120w": "waiting",
        },
        ("tiny:q4_k_m", 512, "pp"): {"laptop-80w": "655 (650–661) n=3", "minipc-120w": "waiting"},
        ("tiny:q4_k_m", 2048, "tg"): {"laptop-80w": "load failed", "minipc-120w": "timeout"},
        ("tiny:q4_k_m", 2048, "pp"): {"laptop-80w": "load failed", "minipc-120w": "timeout"},
        ("tiny:q8_0", 512, "tg"): {"laptop-80w": "43.1 (42.8–43.5) n=3", "minipc-120w": "waiting"},
        ("tiny:q8_0", 512, "pp"): {"laptop-80w": "805 (798–812) n=3", "minipc-120w": "waiting"},
        ("tiny:q8_0", 2048, "tg"): {
            "laptop-80w": "40.2 (39.9–41.0) n=3",
            "minipc-120w": "47.6 (47.1–48.0) n=3",
        },
        ("tiny:q8_0", 2048, "pp"): {
            "laptop-80w": "760 (752–772) n=3",
            "minipc-120w": "901 (898–905) n=3",
        },
    }


def test_every_cell_knows_n_median_spread_and_ci() -> None:
    pivot = build_pivot(CAMPAIGN, _campaign_rows())
    cell = pivot.cell(("tiny:q8_0", 2048, "tg"), ("minipc-120w",))
    assert cell is not None and cell.stats is not None

    stats = cell.stats
    assert (stats.n, stats.median) == (3, 47.6)
    assert stats.mad == pytest.approx(0.4)
    assert stats.rel_spread == pytest.approx(1.4826 * 0.4 / 47.6)
    assert stats.ci_low is None and stats.ci_high is None  # 3 samples: no honest 95% CI


def test_cell_pools_the_figures_it_was_given() -> None:
    cell = Cell(METRICS["tg"], values=[43.1, 42.8, 43.5], statuses=["ok"])

    assert cell.stats is not None and cell.stats.median == 43.1
    assert cell_text(cell) == "43.1 (42.8–43.5) n=3"


def test_cell_with_fewer_than_three_samples_has_no_ci() -> None:
    assert cell_text(Cell(METRICS["load"], values=[9.5], statuses=["ok"])) == "9.50 n=1"


def test_cell_counts_failures_beside_good_figures() -> None:
    cell = Cell(METRICS["tg"], values=[40.0, 41.0, 42.0], statuses=["ok", "error", "timeout"])

    assert cell_text(cell) == "41.0 (40.0–42.0) n=3 (+error, timeout)"


def test_cell_lists_distinct_failures_in_words() -> None:
    cell = Cell(METRICS["tg"], statuses=["timeout", "load_failed", "timeout"])

    assert cell_text(cell) == "load failed, timeout ×2"


def test_unstable_cell_is_flagged() -> None:
    cell = Cell(METRICS["tg"], values=[40.0, 52.0, 31.0, 45.0, 36.0], statuses=["ok"])

    assert cell_text(cell).endswith(" ⚠")


def test_cell_without_results_is_waiting() -> None:
    assert cell_text(Cell(METRICS["tg"], statuses=["waiting"])) == "waiting"
    assert cell_text(Cell(METRICS["tg"], statuses=["cancelled"])) == "cancelled"


def test_ok_job_without_the_metric_is_missing_never_zero() -> None:
    spec = _spec("laptop-80w", "tiny:q8_0", 512)
    pivot = build_pivot(CAMPAIGN, [JobRow(spec, _result(spec))], PivotOptions(metrics=("ttft",)))
    [cell] = pivot.cells.values()

    assert cell.values == [] and cell.stats is None
    assert cell_text(cell) == "-"


def test_skipped_result_shows_the_prediction() -> None:
    spec = _spec("laptop-80w", "tiny:q8_0", 512)
    skipped = _result(spec, Status.SKIPPED, error="predicted OOM (needs 23.1 GB, has 0.5 GB)")
    pivot = build_pivot(CAMPAIGN, [JobRow(spec, skipped)])

    texts = {cell_text(c) for c in pivot.cells.values()}
    assert texts == {"skipped: predicted OOM (needs 23.1 GB, has 0.5 GB)"}
    table_text = render(pivot, "table")
    assert "all metrics" in table_text
    assert "skipped: predicted OOM (needs 23.1 GB, has 0.5 GB)" in table_text


def test_axis_with_several_values_becomes_a_row_label() -> None:
    laptop = _spec("laptop-80w", "tiny:q8_0", 512)
    other = JobSpec(**{**laptop.model_dump(exclude={"job_id"}), "configuration": {}})
    pivot = build_pivot(CAMPAIGN, [JobRow(laptop, _result(laptop)), JobRow(other, None)])

    # vram_split is a configuration axis: it goes to the columns (the host does not vary).
    assert pivot.column_axes == ["vram_split"]
    assert pivot.columns == [("32G",), ("-",)]  # sizes first, "-" (none) last
    assert pivot.row_axes == ["metric"]
    assert pivot.constant_axes["context"] == 512
    assert pivot.constant_axes["host"] == "laptop-80w"


def test_rows_and_columns_can_be_chosen() -> None:
    pivot = build_pivot(
        CAMPAIGN,
        _campaign_rows(),
        PivotOptions(rows=("host", "context"), columns=("model", "metric")),
    )

    assert pivot.row_axes == ["host", "context"]
    assert pivot.column_axes == ["model", "metric"]
    assert pivot.columns[:2] == [("tiny:q4_k_m", "tg"), ("tiny:q4_k_m", "pp")]
    headers, body = table(pivot)
    assert headers[:3] == ["host", "context", "tiny:q4_k_m tg tokens/s"]
    assert body[0][:3] == ["laptop-80w", "512", "61.5 (60.7–61.9) n=3"]


def test_an_axis_that_varies_is_never_pooled() -> None:
    # Only host asked for: context and model still vary, so they are added to the rows.
    pivot = build_pivot(CAMPAIGN, _campaign_rows(), PivotOptions(columns=("host",), rows=()))

    assert pivot.row_axes == ["model", "context", "metric"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (PivotOptions(rows=("colour",)), "unknown axis 'colour'"),
        (PivotOptions(metrics=("speed",)), "unknown metric 'speed'"),
        (PivotOptions(rows=("host",), columns=("host",)), "'host' is in both"),
        (PivotOptions(baseline=("host", "nas")), "no such host (have: laptop-80w, minipc-120w)"),
        (PivotOptions(baseline=("engine", "llama-bench")), "'engine' is not a row or column"),
    ],
)
def test_bad_options_say_what_to_do(options: PivotOptions, message: str) -> None:
    with pytest.raises(ReportError, match=re.escape(message)):
        build_pivot(CAMPAIGN, _campaign_rows(), options)


def test_baseline_adds_ratio_and_verdict() -> None:
    pivot = build_pivot(CAMPAIGN, _campaign_rows(), PivotOptions(baseline=("host", "laptop-80w")))
    texts = _texts(pivot)

    # 47.6 vs 40.2 tokens/s, 3 repetitions each: the smallest exact p is 0.1, so no verdict.
    assert texts[("tiny:q8_0", 2048, "tg")]["minipc-120w"] == "47.6 (47.1–48.0) n=3 · 1.18× ≈"
    assert texts[("tiny:q8_0", 2048, "tg")]["laptop-80w"] == "40.2 (39.9–41.0) n=3"
    # No baseline figures to compare with: no ratio.
    assert texts[("tiny:q4_k_m", 512, "tg")]["minipc-120w"] == "waiting"


def test_baseline_claims_a_difference_the_exact_test_supports() -> None:
    laptop = _spec("laptop-80w", "tiny:q8_0", 512)
    minipc = _spec("minipc-120w", "tiny:q8_0", 512)
    base = _result(laptop)
    six = [43.1, 42.8, 43.5, 43.0, 42.9, 43.3]
    faster = [47.6, 47.1, 48.0, 47.4, 47.9, 47.5]

    def with_tg(spec: JobSpec, tg: list[float]) -> RunResult:
        measurements = [m.model_copy(update={"samples_ts": tg}) for m in base.measurements]
        update = {"job_id": spec.job_id, "host": spec.host, "measurements": measurements}
        return base.model_copy(update=update)

    rows = [JobRow(laptop, with_tg(laptop, six)), JobRow(minipc, with_tg(minipc, faster))]
    options = PivotOptions(metrics=("tg",), baseline=("host", "laptop-80w"))
    cell = build_pivot(CAMPAIGN, rows, options).cell(("tg",), ("minipc-120w",))

    assert cell is not None and cell.comparison is not None
    assert cell.comparison.p_value is not None and cell.comparison.p_value < 0.05
    assert re.fullmatch(r"47\.5 \[[\d.]+–[\d.]+\] n=6 · 1\.10× faster", cell_text(cell))


def test_baseline_never_claims_what_the_data_does_not_support() -> None:
    laptop = _spec("laptop-80w", "tiny:q8_0", 512)
    minipc = _spec("minipc-120w", "tiny:q8_0", 512)
    base = _result(laptop)

    def minipc_result(tg: list[float]) -> RunResult:
        measurements = [m.model_copy(update={"samples_ts": tg}) for m in base.measurements]
        update = {"job_id": minipc.job_id, "host": minipc.host, "measurements": measurements}
        return base.model_copy(update=update)

    options = PivotOptions(metrics=("tg",), baseline=("host", "laptop-80w"))
    close = [JobRow(laptop, base), JobRow(minipc, minipc_result([43.3, 42.6, 43.9]))]
    few = [JobRow(laptop, base), JobRow(minipc, minipc_result([90.0, 91.0]))]

    # The exact test cannot reject: not distinguishable. Two samples: a ratio but no verdict.
    same = build_pivot(CAMPAIGN, close, options).cell(("tg",), ("minipc-120w",))
    short = build_pivot(CAMPAIGN, few, options).cell(("tg",), ("minipc-120w",))
    assert cell_text(same).endswith("· 1.00× ≈")
    assert cell_text(short).endswith("· 2.10× n<3")


def test_failed_results_add_no_figures_even_with_measurements() -> None:
    spec = _spec("laptop-80w", "tiny:q8_0", 512)
    result = _result(spec).model_copy(update={"status": Status.ERROR, "error": "bad output"})
    pivot = build_pivot(CAMPAIGN, [JobRow(spec, result)])

    assert all(c.values == [] for c in pivot.cells.values())
    assert {cell_text(c) for c in pivot.cells.values()} == {"error"}


# -- rendering -------------------------------------------------------------------------------


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_markdown_is_a_github_pipe_table_with_legend() -> None:
    text = render(build_pivot(CAMPAIGN, _campaign_rows()), "md")
    lines = text.splitlines()
    table_lines = _table_lines(text)

    assert lines[0] == f"### {CAMPAIGN}"
    assert (
        "*engine llama-bench, backend cpu, dedicated VRAM 32G, workload (pp+tg) 64+32; "
        "6/8 jobs finished*" in lines
    )
    # header, separator; each configuration's two metrics; the failed one collapsed to one line
    assert len(table_lines) == 2 + 2 + 1 + 2 + 2
    assert all(line.endswith("|") for line in table_lines)
    assert {line.count("|") for line in table_lines} == {6}  # model, context, metric, 2 hosts
    assert re.fullmatch(r"\|(\s*:?-+:?\s*\|){5}", table_lines[1])
    assert [c.strip() for c in table_lines[0].strip("|").split("|")] == [
        "model",
        "context",
        "host",
        "laptop-80w",
        "minipc-120w",
    ]
    assert [c.strip() for c in table_lines[-2].strip("|").split("|")] == [
        "",
        "2048",
        "tg tokens/s",
        "40.2 (39.9–41.0) n=3",
        "47.6 (47.1–48.0) n=3",
    ]
    assert [c.strip() for c in table_lines[4].strip("|").split("|")] == [
        "",
        "2048",
        "all metrics",
        "load failed",
        "timeout",
    ]
    # lines of the table are contiguous
    first = lines.index(table_lines[0])
    assert lines[first : first + len(table_lines)] == table_lines
    assert any(line.startswith("Cells: median [95% CI of the median") for line in lines)


def test_markdown_lists_failures_with_their_reason() -> None:
    lines = render(build_pivot(CAMPAIGN, _campaign_rows()), "md").splitlines()

    notes = lines[lines.index("Failures:") + 1 :]
    assert len(notes) == 2
    # The reason: the error's first line (what happened) and its last (the engine's own word).
    assert notes[0] == (
        f"- laptop-80w tiny:q4_k_m ctx 2048: load failed "
        f"(job {_job_id('laptop-80w', 'tiny:q4_k_m', 2048)}): "
        "exit code 1: main: error: failed to load model '/models/tiny-q4_k_m.gguf'"
    )
    assert notes[1].startswith(
        f"- minipc-120w tiny:q4_k_m ctx 2048: timeout "
        f"(job {_job_id('minipc-120w', 'tiny:q4_k_m', 2048)}): "
    )


def test_terminal_table() -> None:
    text = render(build_pivot(CAMPAIGN, _campaign_rows()), "table")
    lines = text.splitlines()

    assert lines[0] == f"campaign {CAMPAIGN}: 6/8 jobs finished"
    assert lines[1] == (
        "engine llama-bench, backend cpu, dedicated VRAM 32G, workload (pp+tg) 64+32"
    )
    header = next(line for line in lines if line.startswith("model"))
    assert header.split() == ["model", "context", "host", "laptop-80w", "minipc-120w"]
    assert any(
        "all metrics" in line and "load failed" in line and "timeout" in line for line in lines
    )
    assert "Failures:" in lines
    assert not _table_lines(text)


def test_host_without_a_job_for_a_configuration_shows_a_dash() -> None:
    laptop = _spec("laptop-80w", "tiny:q8_0", 512)
    minipc = _spec("minipc-120w", "tiny:q8_0", 2048)
    text = render(
        build_pivot(CAMPAIGN, [JobRow(laptop, _result(laptop)), JobRow(minipc, None)]), "md"
    )
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in _table_lines(text)[2:]]

    assert cells == [
        ["512", "tg tokens/s", "43.1 (42.8–43.5) n=3", "-"],
        ["", "pp tokens/s", "805 (798–812) n=3", "-"],
        ["2048", "all metrics", "-", "waiting"],
    ]
    assert "Failures:" not in text


TIDY_COLUMNS = [
    "campaign", "job_id", "host", "engine", "model", "backend", "context", "vram_split",
    "workload", "repetitions", "status", "attempt",
    "tg_n", "tg_tokens_per_s_median", "tg_tokens_per_s_mad", "tg_tokens_per_s_samples", "tg_depth",
    "pp_n", "pp_tokens_per_s_median", "pp_tokens_per_s_mad", "pp_tokens_per_s_samples", "pp_depth",
    "ttft_s_median", "ttft_s_mad", "load_time_s", "build_commit", "error",
    "gen_tokens", "peak_vram_gb", "peak_gtt_gb", "peak_rss_gb", "gpu_busy_pct",
    "copy_engine_busy_pct", "power_w", "j_per_token", "tokens_per_s_per_w", "power_source",
    "disturbed", "disturbance_reasons", "backend_verdict",
]  # fmt: skip


def test_tidy_rows_one_per_job() -> None:
    rows = _campaign_rows()
    records = tidy_rows(build_pivot(CAMPAIGN, rows))

    assert len(records) == 8
    assert [r["job_id"] for r in records] == [row.spec.job_id for row in rows]
    assert all(list(r) == TIDY_COLUMNS for r in records)
    by_id = {r["job_id"]: r for r in records}

    ok = by_id[_job_id("minipc-120w", "tiny:q8_0", 2048)]
    assert ok == {
        "campaign": CAMPAIGN,
        "job_id": _job_id("minipc-120w", "tiny:q8_0", 2048),
        "host": "minipc-120w",
        "engine": "llama-bench",
        "model": "tiny:q8_0",
        "backend": "cpu",
        "context": 2048,
        "vram_split": "32G",
        "workload": "64+32",
        "repetitions": 3,
        "status": "ok",
        "attempt": 1,
        "tg_n": 3,
        "tg_tokens_per_s_median": 47.6,
        "tg_tokens_per_s_mad": pytest.approx(0.4),
        "tg_tokens_per_s_samples": [47.6, 47.1, 48.0],
        "tg_depth": 1952,
        "pp_n": 3,
        "pp_tokens_per_s_median": 901.0,
        "pp_tokens_per_s_mad": 3.5,
        "pp_tokens_per_s_samples": [901.0, 897.5, 905.0],
        "pp_depth": 1952,
        "ttft_s_median": None,  # llama-bench makes no requests
        "ttft_s_mad": None,
        "load_time_s": None,
        "build_commit": BUILD_COMMIT,
        "error": None,
        "gen_tokens": None,  # llama-bench's n_gen is a setting, not a count of tokens made
        # no telemetry in these results: missing, never 0
        "peak_vram_gb": None,
        "peak_gtt_gb": None,
        "peak_rss_gb": None,
        "gpu_busy_pct": None,
        "copy_engine_busy_pct": None,
        "power_w": None,
        "j_per_token": None,
        "tokens_per_s_per_w": None,
        "power_source": None,
        # results without the checks (written before they existed): unknown, never "fine"
        "disturbed": None,
        "disturbance_reasons": None,
        "backend_verdict": None,
    }

    timeout = by_id[_job_id("minipc-120w", "tiny:q4_k_m", 2048)]
    assert (timeout["status"], timeout["attempt"], timeout["error"]) == (
        "timeout",
        2,
        TIMEOUT_ERROR,
    )
    assert timeout["tg_n"] is timeout["tg_tokens_per_s_median"] is timeout["pp_depth"] is None

    waiting = by_id[_job_id("minipc-120w", "tiny:q8_0", 512)]
    assert (waiting["status"], waiting["attempt"], waiting["build_commit"]) == (
        "waiting",
        None,
        None,
    )


def test_json_output_is_the_tidy_rows() -> None:
    pivot = build_pivot(CAMPAIGN, _campaign_rows())

    assert json.loads(render(pivot, "json")) == tidy_rows(pivot)


def test_csv_output_has_a_header_and_one_line_per_job() -> None:
    pivot = build_pivot(CAMPAIGN, _campaign_rows())
    reader = csv.DictReader(io.StringIO(render(pivot, "csv")))
    records = list(reader)

    assert reader.fieldnames == TIDY_COLUMNS
    assert len(records) == 8
    ok = next(r for r in records if r["job_id"] == _job_id("laptop-80w", "tiny:q8_0", 512))
    assert ok["status"] == "ok"
    assert ok["context"] == "512"
    assert ok["tg_depth"] == "416"  # 512 - 64 - 32
    assert float(ok["tg_tokens_per_s_median"]) == 43.1
    assert float(ok["pp_tokens_per_s_median"]) == 805.3
    assert json.loads(ok["tg_tokens_per_s_samples"]) == [43.1, 42.8, 43.5]
    failed = next(r for r in records if r["status"] == "load_failed")
    assert failed["tg_n"] == "" and failed["attempt"] == "1"
    assert failed["error"] == LOAD_ERROR  # a multi-line field survives quoting


def test_csv_of_nothing_is_empty() -> None:
    assert render(build_pivot(CAMPAIGN, []), "csv") == ""
    assert json.loads(render(build_pivot(CAMPAIGN, []), "json")) == []


# -- telemetry over several requests -----------------------------------------------------------


def test_server_telemetry_counts_every_decode_window() -> None:
    from jobs.telemetry import MetricSummary, PhaseSummary
    from tests.orchestrator import report_data

    job = report_data.spec("vulkan", "32G")
    base = report_data.result(job)
    assert base.telemetry is not None

    def window(phase: str, start: float, busy: float, power: float, tokens: int, energy: float):
        return PhaseSummary(
            phase=phase,  # type: ignore[arg-type]
            start_s=start,
            end_s=start + 1.0,
            tokens=tokens,
            metrics={
                "gpu_busy_pct": MetricSummary(mean=busy, peak=busy),
                "engine_dma_busy_pct": MetricSummary(mean=busy / 10, peak=busy / 10),
                "power_w": MetricSummary(mean=power, peak=power),
            },
            energy_j=energy if phase == "decode" else None,
            j_per_token=energy / tokens if phase == "decode" else None,
            tokens_per_s_per_w=tokens / energy if phase == "decode" else None,
        )

    # Three requests: prefill then decode each; the decode windows differ in size and power.
    phases = [
        window("prefill", 0.0, 99.0, 120.0, 21, 0.0),
        window("decode", 1.0, 60.0, 50.0, 100, 200.0),
        window("prefill", 2.0, 98.0, 110.0, 21, 0.0),
        window("decode", 3.0, 70.0, 60.0, 300, 450.0),
        window("prefill", 4.0, 97.0, 115.0, 21, 0.0),
        window("decode", 5.0, 80.0, 70.0, 600, 1350.0),
    ]
    result = base.model_copy(
        update={"telemetry": base.telemetry.model_copy(update={"phases": phases})}
    )

    assert METRICS["gpu_busy"].values(result) == [60.0, 70.0, 80.0]
    assert METRICS["copy_busy"].values(result) == [6.0, 7.0, 8.0]
    assert METRICS["power"].values(result) == [50.0, 60.0, 70.0]
    # Energy: all decode windows together, weighted by their tokens (not the last one's 2.25).
    assert METRICS["j_per_token"].values(result) == [pytest.approx(2000.0 / 1000)]
    assert METRICS["tps_per_w"].values(result) == [pytest.approx(1000 / 2000.0)]
    cell = build_pivot(CAMPAIGN, [JobRow(job, result)], PivotOptions(metrics=("gpu_busy",)))
    [gpu] = cell.cells.values()
    assert gpu.stats is not None and (gpu.stats.n, gpu.stats.median) == (3, 70.0)


# -- configurations are never pooled -----------------------------------------------------------


def _configured(configuration: dict[str, str], name: str | None = None, **settings: str):
    from tests.orchestrator import report_data

    job = report_data.spec("vulkan", "32G").model_copy(
        update={"configuration": configuration, "config_name": name, "settings": settings}
    )
    job = job.model_copy(update={"job_id": JobSpec.model_validate(
        job.model_dump(exclude={"job_id"})).job_id})  # fmt: skip
    result = report_data.result(report_data.spec("vulkan", "32G"))
    return JobRow(job, result.model_copy(update={"job_id": job.job_id, "job": job}))


def test_every_configuration_part_is_an_axis() -> None:
    small = _configured({"vram_split": "512M", "ttm_pages_limit": "1048576"})
    large = _configured({"vram_split": "512M", "ttm_pages_limit": "8388608"})
    assert small.spec.job_id != large.spec.job_id

    pivot = build_pivot(CAMPAIGN, [small, large], PivotOptions(metrics=("tg",)))

    assert "ttm_pages_limit" in pivot.column_axes + pivot.row_axes
    assert len(pivot.cells) == 2  # one cell per configuration, not one pooling both
    assert all(c.stats is not None and c.stats.n == 5 for c in pivot.cells.values())


def test_a_named_configuration_stands_for_its_parts() -> None:
    from orchestrator.report.pivot import job_axes

    row = _configured({"vram_split": "512M", "ttm_pages_limit": "1048576"}, "big-gtt")
    plain = _configured({"vram_split": "512M"}, None, power_limit_w="45")

    assert job_axes(row.spec)["configuration"] == "big-gtt"
    assert job_axes(row.spec)["vram_split"] == "-" and "ttm_pages_limit" not in job_axes(row.spec)
    assert job_axes(plain.spec)["vram_split"] == "512M"
    assert job_axes(plain.spec)["power_limit_w"] == "45"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("ttm_pages_limit=1048576", "ttm_pages_limit=8388608"),
        ("power_limit_w=45", "power_limit_w=80"),
        ("configuration=small", "configuration=large"),
    ],
)
def test_compare_within_takes_any_axis_the_campaign_has(tmp_path: Any, a: str, b: str) -> None:
    from orchestrator.report.compare import compare_within
    from orchestrator.store import Store

    axis = a.split("=")[0]
    value_a, value_b = a.split("=")[1], b.split("=")[1]
    if axis == "ttm_pages_limit":
        rows = [_configured({"ttm_pages_limit": v}) for v in (value_a, value_b)]
    elif axis == "power_limit_w":
        rows = [
            _configured({"vram_split": "32G"}, None, power_limit_w=v) for v in (value_a, value_b)
        ]
    else:
        rows = [_configured({"vram_split": s}, n) for s, n in (("512M", "small"), ("32G", "large"))]
    store = Store.open(tmp_path / "orch.db")
    campaign = rows[0].spec.campaign
    store.record_campaign(campaign, "m.yaml", "")
    for row in rows:
        store.record_job(row.spec)
        assert row.result is not None
        store.upsert_result(row.result)

    pivot = compare_within(store, campaign, a, b, PivotOptions(metrics=("tg",)))

    assert pivot.columns == [(a,), (b,)]
    with pytest.raises(ReportError, match=f"AXIS one of .*{axis}"):
        compare_within(store, campaign, "colour=red", "colour=blue")


def test_csv_takes_every_axis_when_jobs_carry_different_ones() -> None:
    limited = _configured({"vram_split": "32G"}, None, power_limit_w="45")
    plain = _configured({"vram_split": "32G"})

    text = render(build_pivot(CAMPAIGN, [plain, limited]), "csv")

    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2
    assert sorted(r["power_limit_w"] for r in rows) == ["", "45"]


def test_a_metric_asked_twice_is_shown_once() -> None:
    pivot = build_pivot(CAMPAIGN, _campaign_rows(), PivotOptions(metrics=("tg", "tg")))

    assert [m.key for m in pivot.metrics] == ["tg"]
    cell = pivot.cell(("tiny:q8_0", 512, "tg"), ("laptop-80w",))
    assert cell is not None and cell.stats is not None and cell.stats.n == 3


def test_an_estimated_pp_speed_is_footnoted_as_such() -> None:
    """LM Studio reports no prefill speed: its pp is prompt tokens / its own TTFT, and the
    cell says so wherever it appears."""
    spec = _spec("laptop-80w", "tiny:q8_0", 2048)
    result = _result(spec)
    assert result.engine is not None
    details = {"pp_source": "prompt_tokens / LM Studio time_to_first_token (an estimate)"}
    estimated = result.model_copy(
        update={"engine": result.engine.model_copy(update={"details": details})}
    )
    text = render(build_pivot(CAMPAIGN, [JobRow(spec, estimated)]), "table")
    [pp_line] = [line for line in text.splitlines() if "pp tokens/s" in line]
    [tg_line] = [line for line in text.splitlines() if "tg tokens/s" in line]
    assert pp_line.endswith("†") and not tg_line.endswith("†")
    assert "† prompt_tokens / LM Studio time_to_first_token (an estimate)" in text
