"""Planner predictions checked against outcomes and measured memory peaks."""

from __future__ import annotations

from datetime import UTC, datetime

from jobs.result import RunResult, Status
from jobs.spec import JobSpec
from jobs.telemetry import MetricSummary, PhaseSummary, Telemetry
from orchestrator.predictions import check_items, check_predictions
from orchestrator.store import JobRow, Prediction

MIB = 2**20
SPEC = JobSpec(campaign="c", host="halo", engine="llama-server", model="m", backend="vulkan",
               context=4096)  # fmt: skip


def _result(status: Status, **metrics: float) -> RunResult:
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    phase = PhaseSummary(
        phase="run", start_s=0, end_s=1,
        metrics={k: MetricSummary(peak=v, samples=3) for k, v in metrics.items()},
    )  # fmt: skip
    return RunResult(
        job_id=SPEC.job_id, campaign="c", host="halo", queue=SPEC.queue, attempt=1,
        status=status, started_at=stamp, finished_at=stamp, worker_version="t",
        telemetry=Telemetry(interval_s=0.1, samples=10, phases=[phase]) if metrics else None,
    )  # fmt: skip


def _row(kind: str, result: RunResult) -> JobRow:
    return JobRow(SPEC, result, prediction=Prediction(kind, 100 * MIB, f"{kind} (needs 100 MiB)"))


def test_a_prediction_holds_when_the_outcome_agrees_and_the_peak_is_compared() -> None:
    gpu = _row("fits", _result(Status.OK, drm_vram_bytes=90 * MIB, drm_gtt_bytes=20 * MIB))
    [check] = check_predictions([gpu])
    assert check.held is True
    assert check.measured_bytes == 110 * MIB and check.ratio == 1.1
    assert "process VRAM + GTT, DRM fdinfo" in check.text()
    [cpu] = check_predictions([_row("fits", _result(Status.OK, rss_bytes=50 * MIB))])
    assert cpu.measured_source == "process RSS" and cpu.ratio == 0.5


def test_wrong_predictions_are_called_wrong() -> None:
    loaded = _row("will not load", _result(Status.OK, rss_bytes=50 * MIB))
    failed = _row("fits", _result(Status.LOAD_FAILED))
    checks = check_predictions([loaded, failed])
    assert [c.held for c in checks] == [False, False]
    lines = check_items(checks)
    assert lines[-1] == "0/2 predictions held" and "WRONG" in lines[0]


def test_outcomes_that_say_nothing_about_memory_test_nothing() -> None:
    rows = [
        _row("fits", _result(Status.TIMEOUT)),
        _row("unknown", _result(Status.LOAD_FAILED)),
        _row("will not load", _result(Status.SKIPPED)),
        JobRow(SPEC, _result(Status.OK)),  # no prediction at all: not listed
    ]
    checks = check_predictions(rows)
    assert [c.held for c in checks] == [None, None, None]
    assert check_items(checks)[-1] == "0/0 predictions held"
    assert (
        check_predictions([_row("fits", _result(Status.OK))])[0]
        .text()
        .endswith("no memory telemetry")
    )


def test_a_mislabelled_run_loaded_the_model() -> None:
    # It ran on another backend than its label, but it loaded: a "fits" held, and a
    # "will not load" was wrong.
    fits = _row("fits", _result(Status.MISLABELLED, rss_bytes=50 * MIB))
    wont = _row("will not load", _result(Status.MISLABELLED, rss_bytes=50 * MIB))
    assert [c.held for c in check_predictions([fits, wont])] == [True, False]
