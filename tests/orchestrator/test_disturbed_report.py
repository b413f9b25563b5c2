"""Reports on disturbed runs: the cell is flagged, no faster/slower is drawn from it, and
`--fail-on-regression` does not count it; the counts agree in report and status.

Two campaigns of five repetitions, q4 clearly faster than q8 (an exact test would say so):
with the q8 job marked disturbed by its worker, every comparison that involves it says
`≈ disturbed` instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobs.result import (
    Disturbance,
    EngineInfo,
    RunResult,
    Status,
    measurement_from_llama_bench,
)
from jobs.spec import JobSpec, Workload
from orchestrator.report import PivotOptions, build_pivot, render
from orchestrator.report.compare import compare_campaigns, regressions
from orchestrator.stats import Verdict, compare, describe
from orchestrator.status import render_status
from orchestrator.store import Store
from tests.orchestrator.test_report import _bench_test

STARTED = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)
PP = [410.0, 415.5, 408.25, 412.0, 409.5]
TG = {
    "tiny:q4_k_m": [61.5, 60.7, 61.9, 61.2, 60.9],
    "tiny:q8_0": [43.1, 42.8, 43.5, 42.9, 43.3],
    "slow": [30.1, 29.8, 30.5, 30.0, 29.7],
}
HOG = "python3 (pid 812): 41.2 s"


def _disturbance(disturbed: bool) -> Disturbance:
    return Disturbance(
        duration_s=20.0,
        logical_cpus=2,
        other_cpu_s=38.0 if disturbed else 0.1,
        other_cpu_fraction=0.95 if disturbed else 0.0025,
        top_others=[HOG] if disturbed else [],
        thresholds={"max_other_cpu_fraction": 0.1},
        disturbed=disturbed,
        reasons=[f"other processes used 95% of the CPUs (limit 10%) ({HOG})"] if disturbed else [],
        sources=["/proc/stat", "/proc/PID/stat"],
    )


def _spec(campaign: str, model: str) -> JobSpec:
    return JobSpec(
        campaign=campaign,
        host="box",
        engine="llama-bench",
        model=model,
        backend="cpu",
        context=512,
        workload=Workload(prompt_tokens=64, gen_tokens=32),
        repetitions=5,
        timeout_s=600,
    )


def _record(store: Store, campaign: str, tg: dict[str, tuple[list[float], bool]]) -> None:
    store.record_campaign(campaign, "m.yaml", "")
    for model, (samples, disturbed) in tg.items():
        spec = _spec(campaign, model)
        store.record_job(spec)
        tests = [_bench_test(spec, "pp", PP), _bench_test(spec, "tg", samples)]
        store.upsert_result(
            RunResult(
                job_id=spec.job_id,
                campaign=campaign,
                host="box",
                queue=spec.queue,
                attempt=1,
                status=Status.OK,
                measurements=[measurement_from_llama_bench(t) for t in tests],
                engine=EngineInfo(name="llama-bench", backend="cpu", binary="/bin/llama-bench"),
                started_at=STARTED,
                finished_at=STARTED + timedelta(seconds=20),
                worker_version="0.1.0",
                job=spec,
                disturbance=_disturbance(disturbed),
            )  # fmt: skip
        )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store.open(tmp_path / "orch.db")
    both = {"tiny:q4_k_m": (TG["tiny:q4_k_m"], False)}
    _record(store, "busy", {**both, "tiny:q8_0": (TG["tiny:q8_0"], True)})
    _record(store, "quiet", {**both, "tiny:q8_0": (TG["tiny:q8_0"], False)})
    return store


def test_the_rule_no_verdict_from_disturbed_samples() -> None:
    fast, slow = describe(TG["tiny:q4_k_m"]), describe(TG["tiny:q8_0"])
    assert fast is not None and slow is not None
    assert compare(fast, slow).verdict is Verdict.UP  # the same samples, undisturbed
    flagged = describe(TG["tiny:q8_0"], disturbed=True)
    assert flagged is not None
    for a, b in ((fast, flagged), (flagged, fast)):
        result = compare(a, b)
        assert result.verdict is Verdict.DISTURBED and result.p_value is None
        assert result.ratio == pytest.approx(a.median / b.median)


@pytest.mark.parametrize("fmt", ["table", "md", "html"])
def test_a_disturbed_cell_is_flagged_and_its_comparison_is_no_verdict(
    store: Store, fmt: str
) -> None:
    options = PivotOptions(metrics=("tg", "pp"), baseline=("model", "tiny:q8_0"))
    quiet = render(build_pivot("quiet", store.campaign_jobs("quiet"), options), fmt)
    assert "× faster" in quiet and "disturbed" not in quiet and "↯" not in quiet

    pivot = build_pivot("busy", store.campaign_jobs("busy"), options)
    q8 = [cell for cell in pivot.cells.values() if cell.disturbed_jobs]
    assert len(q8) == 2  # tg and pp of the disturbed q8 job
    verdicts = [c.comparison.verdict for c in pivot.cells.values() if c.comparison]
    assert verdicts == [Verdict.DISTURBED, Verdict.DISTURBED]  # q4 against a disturbed q8

    text = render(pivot, fmt)
    assert "× faster" not in text and "× slower" not in text
    assert text.count("≈ disturbed") == 2 + 1  # two cells, and the legend names it
    assert "1/2 jobs finished" not in text and "2/2 jobs finished, 1 disturbed" in text
    assert "↯ = disturbed" in text
    assert "Disturbed runs" in text
    assert f"box llama-bench tiny:q8_0 ctx 512 (job {_spec('busy', 'tiny:q8_0').job_id})" in text
    assert HOG in text


def test_fail_on_regression_cannot_pass_on_a_disturbed_cell(store: Store) -> None:
    # "slow" in B is 30% slower than A: a regression when quiet; when B's run was disturbed
    # no verdict is drawn, and the guard says it could not judge instead of passing.
    _record(store, "a", {"tiny:q8_0": (TG["tiny:q8_0"], False)})
    _record(store, "b-quiet", {"tiny:q8_0": (TG["slow"], False)})
    _record(store, "b-busy", {"tiny:q8_0": (TG["slow"], True)})
    options = PivotOptions(metrics=("tg",))

    quiet = compare_campaigns(store, "a", "b-quiet", options)
    assert [r.where for r in regressions(quiet, 5.0)] == ["tg tokens/s"]

    busy = compare_campaigns(store, "a", "b-busy", options)
    [not_judged] = regressions(busy, 5.0)
    assert not_judged.where == "tg tokens/s" and not_judged.what.startswith("not judged: disturbed")
    # the same when B looks as fast as A: a disturbed A could hide a regression
    _record(store, "b-busy-same", {"tiny:q8_0": (TG["tiny:q8_0"], True)})
    same = compare_campaigns(store, "a", "b-busy-same", options)
    assert [r.what.split(" (")[0] for r in regressions(same, 5.0)] == ["not judged: disturbed runs"]
    assert "≈ disturbed" in render(busy, "table")


def test_status_says_how_many_results_were_disturbed(store: Store) -> None:
    assert "2/2 jobs finished (1 disturbed: no verdict drawn from them)" in render_status(
        store, None, "busy"
    )
    assert "disturbed" not in render_status(store, None, "quiet")
