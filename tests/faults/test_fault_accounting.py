"""The fault suite's accounting on made-up ledgers and results: each count it asserts zero is
one it can see (an overlap, a second report, stores that disagree, a lost or failed job, a
run of no submitted job), so a scenario passing says something."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jobs.result import RunResult, Status
from jobs.spec import JobSpec
from orchestrator.store import Store
from tests.faults.accounting import account
from tests.faults.ledger import Ledger, overlaps
from tests.poison import job

MODEL = Path("/models/tiny.gguf")
MODELS = {"box": {"tiny:q8_0": MODEL}}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _ledger(path: Path, *runs: tuple[int, float, float | None, int | None, int]) -> Ledger:
    """runs: (pid, start, end or None, exit or None, depth) on box `box`."""
    lines = []
    for pid, start, end, code, depth in runs:
        lines.append(
            {
                "event": "start",
                "pid": pid,
                "at": start,
                "box": "box",
                "model": str(MODEL),
                "depth": depth,
            }
        )
        if end is not None:
            lines.append({"event": "end", "pid": pid, "at": end, "exit": code})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return Ledger.read(path)


def _depth(spec: JobSpec) -> int:
    return max(0, spec.context - spec.workload.prompt_tokens - spec.workload.gen_tokens)


def _result(spec: JobSpec, attempt: int = 1, status: Status = Status.OK) -> RunResult:
    return RunResult(
        job_id=spec.job_id,
        campaign=spec.campaign,
        host=spec.host,
        queue=spec.queue,
        attempt=attempt,
        lease_generation=1,
        status=status,
        started_at=T0 + timedelta(minutes=attempt),
        finished_at=T0 + timedelta(minutes=attempt, seconds=5),
        worker_version="test",
        job=spec,
    )


def test_overlaps_on_one_box_only_and_a_killed_run_lasts_until_seen_gone(tmp_path: Path) -> None:
    ledger = _ledger(
        tmp_path / "l", (1, 0.0, 1.0, 0, 10), (2, 0.5, 2.0, 0, 20), (3, 2.0, None, None, 30)
    )
    assert [(a.pid, b.pid) for a, b in overlaps(ledger.ordered())] == [(1, 2)]
    later = _ledger(tmp_path / "m", (3, 2.0, None, None, 30), (4, 5.0, 6.0, 0, 40))
    assert len(overlaps(later.ordered())) == 1  # never seen to end: it may still run
    later.runs[3].gone = 4.0
    assert overlaps(later.ordered()) == [] and not later.runs[3].completed
    elsewhere = _ledger(tmp_path / "n", (5, 0.0, 3.0, 0, 10))
    elsewhere.runs[5].box = "other"
    assert overlaps([*elsewhere.ordered(), *ledger.ordered()[:1]]) == []


def test_account_sees_every_kind_of_fault(tmp_path: Path) -> None:
    a, b, c = (job("box", campaign="acc", context=ctx) for ctx in (2048, 3072, 4096))
    store, other = Store.open(tmp_path / "a.db"), Store.open(tmp_path / "b.db")
    for kept in (store, other):
        kept.upsert_result(_result(a))
        kept.upsert_result(_result(b, status=Status.ERROR))  # a failure where ok was expected
    other.upsert_result(_result(c))  # c: in one store only
    ledger = _ledger(
        tmp_path / "l",
        (1, 0.0, 1.0, 0, _depth(a)),
        (2, 1.5, 2.0, 0, _depth(a)),  # a completed twice
        (3, 1.8, 3.0, 0, _depth(b)),  # overlaps a's second run
        (4, 4.0, 5.0, 0, 999),  # a run of no submitted job
    )
    published = [_result(a), _result(a, attempt=2), _result(b, status=Status.ERROR)]
    figures = account("t", [a, b, c], [store, other], ledger, published, MODELS)
    assert (figures.submitted, figures.stored, figures.lost) == (3, 1, 2)
    # a: two distinct reports, and the stores' final (attempt 1) is not the stream's (attempt 2)
    assert figures.duplicated == 1 and set(figures.details) >= {
        "reported twice",
        "final results differ",
    }
    assert (figures.overlaps, figures.completed_twice, figures.stray_runs) == (1, 1, 1)
    assert figures.runs == 4 and figures.runs_restarted == 1

    clean = account(
        "t",
        [a],
        [store],
        _ledger(tmp_path / "k", (1, 0.0, 1.0, 0, _depth(a))),
        [_result(a), _result(a)],
        MODELS,
    )
    assert (clean.stored, clean.lost, clean.duplicated, clean.overlaps) == (1, 0, 0, 0)
