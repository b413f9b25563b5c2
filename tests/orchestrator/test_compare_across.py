"""`orch compare` across axes the user ignores, and `--baseline` where several columns match.

The fleet: a laptop with a 512M carve-out and a mini-PC with 32G, each running llama-bench on
Vulkan and ROCm. Matching on every axis, they share nothing; `--ignore vram_split` compares
the boxes as their owners run them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobs.result import EngineInfo, RunResult, Status, measurement_from_llama_bench
from jobs.spec import JobSpec, Workload
from orchestrator.report import PivotOptions, ReportError, build_pivot, render
from orchestrator.report.compare import compare_campaigns, compare_within, regressions
from orchestrator.stats import Verdict
from orchestrator.store import JobRow, Store
from tests.orchestrator.test_report import _bench_test

FLEET = "fleet"
LAPTOP, MINIPC = "laptop-80w", "minipc-120w"
STARTED = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
PP = [410.0, 415.5, 408.25, 412.0, 409.5]
# tg tokens/s, 5 repetitions: Vulkan much faster on the mini-PC; ROCm 5.9% slower there.
TG = {
    (LAPTOP, "vulkan"): [17.26, 17.47, 17.10, 17.33, 17.00],
    (MINIPC, "vulkan"): [42.89, 43.40, 42.50, 43.06, 42.25],
    (LAPTOP, "rocm"): [15.28, 15.46, 15.14, 15.34, 15.05],
    (MINIPC, "rocm"): [14.42, 14.59, 14.29, 14.48, 14.20],
}


def _job(
    campaign: str, host: str, split: str, backend: str, tg: list[float] | None, context: int = 4096
) -> JobRow:
    spec = JobSpec(
        campaign=campaign,
        host=host,
        engine="llama-bench",
        model="tiny:q8_0",
        backend=backend,
        context=context,
        configuration={"vram_split": split},
        workload=Workload(prompt_tokens=64, gen_tokens=32),
        repetitions=5,
        timeout_s=600,
    )
    if tg is None:
        return JobRow(spec, None)  # still waiting
    tests = [_bench_test(spec, "pp", PP), _bench_test(spec, "tg", tg)]
    result = RunResult(
        job_id=spec.job_id,
        campaign=campaign,
        host=host,
        queue=spec.queue,
        attempt=1,
        status=Status.OK,
        measurements=[measurement_from_llama_bench(t) for t in tests],
        engine=EngineInfo(name="llama-bench", backend=backend, binary="/opt/bin/llama-bench"),
        declared={"vram_split": split},
        started_at=STARTED,
        finished_at=STARTED + timedelta(seconds=30),
        worker_version="0.1.0",
        job=spec,
    )
    return JobRow(spec, result)


def _store(path: Path, rows: dict[str, list[JobRow]]) -> Store:
    store = Store.open(path)
    for campaign, jobs in rows.items():
        store.record_campaign(campaign, "matrix.yaml", "")
        for row in jobs:
            store.record_job(row.spec)
            if row.result is not None:
                store.upsert_result(row.result)
    return store


def _fleet(*extra: JobRow) -> list[JobRow]:
    """Each box in its own carve-out: the laptop at 512M, the mini-PC at 32G."""
    split = {LAPTOP: "512M", MINIPC: "32G"}
    return [_job(FLEET, h, split[h], b, tg) for (h, b), tg in TG.items()] + list(extra)


@pytest.fixture
def fleet(tmp_path: Path) -> Store:
    return _store(tmp_path / "orch.db", {FLEET: _fleet()})


def test_boxes_in_different_carve_outs_match_only_when_told(fleet: Store) -> None:
    a, b = f"host={LAPTOP}", f"host={MINIPC}"

    with pytest.raises(ReportError) as refused:
        compare_within(fleet, FLEET, a, b)
    pivot = compare_within(fleet, FLEET, a, b, PivotOptions(metrics=("tg",)), ("vram_split",))

    message = str(refused.value)
    assert f"vram_split (host={LAPTOP}: 512M; host={MINIPC}: 32G)" in message
    assert message.endswith("pass --ignore vram_split")
    assert pivot.columns == [(a,), (b,)]
    assert pivot.subtitle == [
        "matched on engine, model, backend, context, workload; "
        f"ignored vram_split (host={LAPTOP}: 512M; host={MINIPC}: 32G)"
    ]
    vulkan = pivot.cell(("vulkan", "tg"), (b,))
    rocm = pivot.cell(("rocm", "tg"), (b,))
    assert vulkan is not None and vulkan.comparison is not None
    assert rocm is not None and rocm.comparison is not None
    assert vulkan.comparison.verdict is Verdict.UP and rocm.comparison.verdict is Verdict.DOWN
    assert f"ignored vram_split (host={LAPTOP}: 512M; host={MINIPC}: 32G)" in render(pivot, "md")


def test_nothing_in_common_names_every_axis_that_kept_the_sides_apart(tmp_path: Path) -> None:
    # Two campaigns run on different boxes in different carve-outs.
    before = [_job("before", LAPTOP, "512M", "vulkan", TG[(LAPTOP, "vulkan")])]
    after = [_job("after", MINIPC, "32G", "vulkan", TG[(MINIPC, "vulkan")])]
    store = _store(tmp_path / "orch.db", {"before": before, "after": after})

    with pytest.raises(ReportError) as refused:
        compare_campaigns(store, "before", "after")
    pivot = compare_campaigns(store, "before", "after", None, ("host", "vram_split"))

    assert str(refused.value) == (
        "after and before have no configuration in common to compare (matched on host, engine, "
        "model, backend, context, vram_split, workload): they differ in host (before: "
        f"{LAPTOP}; after: {MINIPC}); vram_split (before: 512M; after: 32G). If that difference "
        "is what you mean to compare across, pass --ignore host --ignore vram_split"
    )
    assert pivot.subtitle[0].endswith(
        f"ignored host (before: {LAPTOP}; after: {MINIPC}), vram_split (before: 512M; after: 32G)"
    )


def test_crossed_configurations_offer_each_way_to_match(tmp_path: Path) -> None:
    # Each side has both backends and both carve-outs, but crossed: no single axis is disjoint.
    tg = TG[(LAPTOP, "vulkan")]
    rows = {
        "before": [_job("before", LAPTOP, "512M", "vulkan", tg),
                   _job("before", LAPTOP, "32G", "rocm", tg)],
        "after": [_job("after", LAPTOP, "32G", "vulkan", tg),
                  _job("after", LAPTOP, "512M", "rocm", tg)],
    }  # fmt: skip
    store = _store(tmp_path / "orch.db", rows)

    with pytest.raises(ReportError) as refused:
        compare_campaigns(store, "before", "after")
    matched = compare_campaigns(store, "before", "after", None, ("vram_split",))

    assert str(refused.value).endswith(
        "they differ in backend (before: rocm, vulkan; after: rocm, vulkan); vram_split "
        "(before: 512M, 32G; after: 512M, 32G). If that difference is what you mean to "
        "compare across, pass --ignore backend or --ignore vram_split"
    )
    assert {
        c.comparison is not None for (_, col), c in matched.cells.items() if col == ("after",)
    } == {True}


def test_ignoring_an_axis_never_pools_two_jobs_of_one_side(tmp_path: Path) -> None:
    # The laptop also ran Vulkan at 32G: ignoring vram_split would average 512M and 32G.
    also_32g = _job(FLEET, LAPTOP, "32G", "vulkan", TG[(MINIPC, "vulkan")])
    store = _store(tmp_path / "orch.db", {FLEET: _fleet(also_32g)})
    a, b = f"host={LAPTOP}", f"host={MINIPC}"

    with pytest.raises(ReportError) as refused:
        compare_within(store, FLEET, a, b, None, ("vram_split",))
    # Naming the carve-out on each side says which of the laptop's jobs is meant.
    pivot = compare_within(store, FLEET, f"{a},vram_split=512M", f"{b},vram_split=32G")

    assert str(refused.value) == (
        f"--ignore vram_split would put jobs of {a} with vram_split 512M and 32G in one cell "
        "(engine llama-bench, model tiny:q8_0, backend vulkan, context 4096, workload (pp+tg) "
        "64+32); orch does not average different configurations: compare without that "
        f"--ignore, or say which on each side (e.g. {a},vram_split=512M)"
    )
    assert pivot.columns == [(f"{a},vram_split=512M",), (f"{b},vram_split=32G",)]
    assert pivot.subtitle == ["matched on engine, model, backend, context, workload"]
    assert all(c.stats is not None and c.stats.n == 5 for c in pivot.cells.values())


@pytest.mark.parametrize(
    ("ignore", "message"),
    [
        (
            ("colour",),
            "--ignore colour: no such axis (axes: host, engine, model, backend, "
            "context, vram_split, workload)",
        ),  # fmt: skip
        (("host",), "--ignore host: host is what A and B compare"),
    ],
)
def test_bad_ignore_says_what_there_is(fleet: Store, ignore: tuple[str, ...], message: str) -> None:
    with pytest.raises(ReportError, match=re.escape(message)):
        compare_within(fleet, FLEET, f"host={LAPTOP}", f"host={MINIPC}", None, ignore)


def test_a_cell_without_baseline_is_no_regression_and_a_missing_b_is(tmp_path: Path) -> None:
    # B ran a context A did not (no baseline: not a regression); A's ROCm job has no B job.
    before = [_job("before", LAPTOP, "512M", b, TG[(LAPTOP, b)]) for b in ("vulkan", "rocm")]
    after = [_job("after", LAPTOP, "512M", "vulkan", TG[(LAPTOP, "vulkan")])]
    extra = _job("after", LAPTOP, "512M", "vulkan", TG[(MINIPC, "rocm")], context=8192)
    store = _store(tmp_path / "orch.db", {"before": before, "after": [*after, extra]})

    pivot = compare_campaigns(store, "before", "after", PivotOptions(metrics=("tg",)))
    found = [str(r) for r in regressions(pivot, 5.0)]

    assert found == ["rocm 4096 tg tokens/s: no job in B"]
    assert pivot.subtitle[1] == (
        "not matched: 1 configuration(s) only in before, "
        "1 configuration(s) only in after (- on the other side)"
    )


# -- --baseline where several columns have the value ----------------------------------------


def _columns_pivot(rows: list[JobRow], **baseline: str) -> PivotOptions:
    first, *more = baseline.items()
    return PivotOptions(
        columns=("host", "vram_split"), metrics=("tg",), baseline=first, baseline_column=tuple(more)
    )


def test_baseline_matching_several_columns_is_refused_until_named_fully() -> None:
    rows = _fleet(_job(FLEET, LAPTOP, "32G", "vulkan", TG[(MINIPC, "vulkan")]))

    with pytest.raises(ReportError) as refused:
        build_pivot(FLEET, rows, _columns_pivot(rows, host=LAPTOP))
    pivot = build_pivot(FLEET, rows, _columns_pivot(rows, host=LAPTOP, vram_split="512M"))

    assert str(refused.value) == (
        f"--baseline host={LAPTOP} matches 2 columns (host {LAPTOP}, dedicated VRAM 512M; host "
        f"{LAPTOP}, dedicated VRAM 32G): name one fully, e.g. --baseline host={LAPTOP},"
        "vram_split=512M, to compare every column with it, or put vram_split in --rows to "
        "compare each with its like"
    )
    assert pivot.subtitle == [f"baseline column: host {LAPTOP}, dedicated VRAM 512M"]
    compared = {c for (_, c), cell in pivot.cells.items() if cell.comparison is not None}
    assert compared == {(LAPTOP, "32G"), (MINIPC, "32G")}
    cell = pivot.cell(("vulkan", "tg"), (MINIPC, "32G"))
    base = pivot.cell(("vulkan", "tg"), (LAPTOP, "512M"))
    assert cell is not None and cell.stats and base is not None and base.stats
    assert cell.comparison is not None
    assert cell.comparison.ratio == pytest.approx(cell.stats.median / base.stats.median)


def test_baseline_matching_one_of_several_column_axes_says_which_column() -> None:
    # host x vram_split, but the laptop has one carve-out: its column is the baseline, and the
    # mini-PC's 32G column is compared with it (a like-for-like match would find nothing).
    pivot = build_pivot(FLEET, _fleet(), _columns_pivot(_fleet(), host=LAPTOP))

    assert pivot.subtitle == [f"baseline column: host {LAPTOP}, dedicated VRAM 512M"]
    cell = pivot.cell(("rocm", "tg"), (MINIPC, "32G"))
    assert cell is not None and cell.comparison is not None
    assert cell.comparison.verdict is Verdict.DOWN


def test_with_metrics_as_columns_each_metric_is_compared_with_its_own() -> None:
    options = PivotOptions(
        rows=("backend",), columns=("host", "vram_split", "metric"), metrics=("tg", "pp"),
        baseline=("host", LAPTOP),
    )  # fmt: skip
    pivot = build_pivot(FLEET, _fleet(), options)

    tg = pivot.cell(("vulkan",), (MINIPC, "32G", "tg"))
    pp = pivot.cell(("vulkan",), (MINIPC, "32G", "pp"))
    assert tg is not None and tg.comparison is not None and pp is not None
    assert pp.comparison is not None and pp.comparison.ratio == pytest.approx(1.0)
    assert tg.comparison.verdict is Verdict.UP
    assert pivot.subtitle == [f"baseline column: host {LAPTOP}, dedicated VRAM 512M"]


@pytest.mark.parametrize(
    ("baseline", "message"),
    [
        ({"host": LAPTOP, "vram_split": "96G"}, "no column has that (columns: host laptop-80w"),
        ({"host": LAPTOP, "backend": "rocm"}, "'backend' is not a column axis"),
    ],
)
def test_a_baseline_column_that_is_not_there_lists_the_columns(
    baseline: dict[str, str], message: str
) -> None:
    with pytest.raises(ReportError, match=re.escape(message)):
        build_pivot(FLEET, _fleet(), _columns_pivot(_fleet(), **baseline))


# -- end to end: the `orch` program -----------------------------------------------------------


def _orch(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from orchestrator.cli import main; main()"]
    return subprocess.run(
        [*command, "--store", str(store), *args], capture_output=True, text=True, timeout=120
    )


def test_orch_compare_ignore_and_fail_on_regression(tmp_path: Path) -> None:
    db = tmp_path / "orch.db"
    _store(db, {FLEET: _fleet()}).conn.close()
    compare = ["compare", f"host={LAPTOP}", f"host={MINIPC}", "--campaign", FLEET]

    apart = _orch(db, *compare, "--fail-on-regression", "5")
    guarded = _orch(db, *compare, "--ignore", "vram_split", "--fail-on-regression", "5")
    tolerant = _orch(db, *compare, "--ignore", "vram_split", "--fail-on-regression", "10")
    report = _orch(db, "report", FLEET, "--columns", "host,vram_split", "--baseline",
                   f"host={LAPTOP},vram_split=512M")  # fmt: skip

    assert apart.returncode == 2 and "pass --ignore vram_split" in apart.stderr
    assert guarded.returncode == 1, guarded.stderr
    assert f"ignored vram_split (host={LAPTOP}: 512M; host={MINIPC}: 32G)" in guarded.stdout
    assert re.search(r"1 regression\(s\) of .* beyond 5%:\n  rocm tg tokens/s: 0\.94\d× "
                     r"\(5\.\d% worse\)$", guarded.stderr.strip())  # fmt: skip
    assert tolerant.returncode == 0 and "no regression" in tolerant.stderr
    assert report.returncode == 0, report.stderr
    assert f"baseline column: host {LAPTOP}, dedicated VRAM 512M" in report.stdout
