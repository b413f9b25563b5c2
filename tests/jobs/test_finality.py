"""jobs.finality: the one order that decides a job's final result, everywhere."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from jobs.finality import eligible, order_key, supersedes
from jobs.result import RunResult, Status
from jobs.spec import JobSpec, Workload

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _job(host: str = "box") -> JobSpec:
    return JobSpec(
        campaign="c", host=host, engine="llama-bench", model="m", backend="cpu", context=64,
        workload=Workload(prompt_tokens=16, gen_tokens=8), repetitions=2,
    )  # fmt: skip


def _result(
    attempt: int,
    generation: int | None = None,
    status: Status = Status.OK,
    *,
    host: str = "box",
    finished_s: float = 0.0,
) -> RunResult:
    job = _job()
    return RunResult(
        job_id=job.job_id, campaign=job.campaign, host=host,
        queue=job.queue if host == job.host else f"orch.{host}.default",
        attempt=attempt, lease_generation=generation, status=status,
        started_at=T0, finished_at=T0 + timedelta(seconds=finished_s),
        worker_version="test", job=job,
    )  # fmt: skip


def test_a_higher_attempt_wins_whatever_its_generation_or_status() -> None:
    old = _result(1, generation=9, status=Status.OK)
    new = _result(2, generation=1, status=Status.ERROR)
    assert supersedes(new, old) and not supersedes(old, new)


def test_equal_attempts_are_decided_by_the_lease_generation() -> None:
    stale = _result(1, generation=1, status=Status.OK, finished_s=50)
    fresh = _result(1, generation=2, status=Status.ERROR)
    assert supersedes(fresh, stale) and not supersedes(stale, fresh)
    # a result without a generation (an older worker) ranks as generation 0
    assert supersedes(_result(1, generation=1), _result(1, generation=None))


def test_then_a_run_that_measured_beats_one_that_did_not() -> None:
    ranked = [Status.SKIPPED, Status.ERROR, Status.LOAD_FAILED, Status.TIMEOUT,
              Status.MISLABELLED, Status.OK]  # fmt: skip
    assert set(ranked) == set(Status)  # a new status must be placed in the order
    for low, high in itertools.pairwise(ranked):
        assert supersedes(_result(1, 1, high), _result(1, 1, low))
        assert not supersedes(_result(1, 1, low), _result(1, 1, high))


def test_the_same_report_twice_changes_nothing() -> None:
    result = _result(2, 3)
    assert not supersedes(result, result.model_copy())
    assert supersedes(result, None)
    assert supersedes(_result(2, 3, finished_s=1), result)  # only the finish time differs


def test_a_refusal_by_the_wrong_host_is_never_a_result() -> None:
    refusal = _result(5, 7, Status.ERROR, host="other")
    good = _result(1, 1)
    assert not eligible(refusal) and eligible(good)
    assert not supersedes(refusal, good)
    assert not supersedes(refusal, None)
    assert supersedes(good, refusal)  # a store that kept one (older orch) lets it go


@pytest.mark.parametrize("seed", range(5))
def test_any_arrival_order_ends_on_the_same_result(seed: int) -> None:
    import random

    statuses = (Status.OK, Status.ERROR)
    results = [_result(a, g, s) for a in (0, 1, 2) for g in (None, 1, 2) for s in statuses]
    results.append(_result(9, 9, Status.OK, host="other"))
    random.Random(seed).shuffle(results)
    kept: RunResult | None = None
    for result in results:
        if supersedes(result, kept):
            kept = result
    assert kept is not None
    assert order_key(kept) == (2, 2, 5, T0)
