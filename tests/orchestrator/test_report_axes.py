"""Named workloads and gpu_layers are report axes: shown, and never pooled into one cell."""

from __future__ import annotations

from typing import Any

from jobs.spec import JobSpec
from orchestrator.report import PivotOptions, build_pivot, render
from orchestrator.report.pivot import job_axes
from orchestrator.store import JobRow
from tests.orchestrator import report_data


def _row(**changes: Any) -> JobRow:
    base = report_data.spec("vulkan", "32G")
    job = JobSpec.model_validate({**base.model_dump(exclude={"job_id"}), **changes})
    result = report_data.result(base)
    return JobRow(job, result.model_copy(update={"job_id": job.job_id, "job": job}))


def test_workload_names_and_gpu_layers_are_axes_of_their_own() -> None:
    rows = [
        _row(workload_name=name, gpu_layers=layers)
        for name in ("short", "long-prompt")
        for layers in (0, 999)
    ]
    assert len({r.spec.job_id for r in rows}) == 4

    pivot = build_pivot(report_data.CAMPAIGN, rows, PivotOptions(metrics=("tg",)))

    shown = pivot.row_axes + pivot.column_axes
    assert "workload" in shown and "gpu_layers" in shown
    assert len(pivot.cells) == 4  # one per workload x gpu_layers, none pooled
    assert all(c.stats is not None and c.stats.n == 5 for c in pivot.cells.values())
    text = render(pivot, "table")
    label = report_data.PROMPT[:23]
    assert f'short ("{label}' in text and f'long-prompt ("{label}' in text
    assert "999" in text


def test_axes_of_a_job_without_the_new_fields_are_unchanged() -> None:
    plain = _row().spec
    assert list(job_axes(plain)) == [
        "host", "engine", "model", "backend", "context", "vram_split", "workload",
    ]  # fmt: skip
    named = _row(workload_name="short", gpu_layers=20).spec
    assert job_axes(named)["workload"] == f"short ({job_axes(plain)['workload']})"
    assert job_axes(named)["gpu_layers"] == 20


def test_a_setting_the_configuration_name_does_not_decide_stays_an_axis() -> None:
    # `configuration: [quiet]` beside `power_limit_w: [45, 80]`: two jobs named "quiet" at
    # different power limits are two cells, never pooled under the name.
    quiet = {"config_name": "quiet", "configuration": {"vram_split": "512M"}}
    rows = [_row(**quiet, settings={"power_limit_w": watts}) for watts in (45, 80)]
    pivot = build_pivot(report_data.CAMPAIGN, rows, PivotOptions(metrics=("tg",)))
    assert "power_limit_w" in pivot.row_axes + pivot.column_axes
    assert len(pivot.cells) == 2
    # What the name does decide (the carve-out) is said by the name alone.
    assert "vram_split" not in pivot.row_axes + pivot.column_axes
    # Where the name decides every part, the name stands for them (as before).
    decided = [
        _row(config_name=name, configuration={"vram_split": split}, settings={"power_limit_w": w})
        for name, split, w in (("quiet", "512M", 45), ("fast", "32G", 80))
    ]
    pivot = build_pivot(report_data.CAMPAIGN, decided, PivotOptions(metrics=("tg",)))
    shown = pivot.row_axes + pivot.column_axes
    assert "configuration" in shown and "power_limit_w" not in shown and len(pivot.cells) == 2
