"""The fault suite's accounting: what was submitted, stored, lost, duplicated and overlapped.

Counts, per scenario (each from this run, none assumed):
- submitted: job ids `orch submit --json` published (first submission and any re-submission);
- stored: submitted jobs with a final result, in every store the scenario checks;
- lost: submitted jobs with no final result in some store, or one whose status is not what
  the scenario expects (an engine that hangs must end as `timeout`, not vanish or pass);
- duplicated: jobs with more than one measurement reported: two distinct eligible results in
  the broker's stream (re-announcements of one result are the same report), or two stores (or
  a store and the stream's own final, by jobs/finality.py) disagreeing on the final result;
- overlaps: pairs of benchmark runs on one box whose ledger intervals intersect;
- runs restarted: engine runs beyond the first of each job (killed mid-run, cut off, refused);
  a job killed mid-run and run again is NOT a duplicate: only a report counts;
- completed twice: jobs whose benchmark ran to its end more than once (a frozen agent's run
  completes, its late result is refused by fencing, and the job runs again: counted here and
  stated, not hidden under "restarted");
- stray runs: benchmark runs of no submitted job (a forged or misrouted job that ran).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jobs.finality import eligible, order_key, supersedes
from jobs.result import RunResult, Status
from jobs.spec import JobSpec
from orchestrator.store import Store
from tests.faults.ledger import Ledger, overlaps

FIGURES_ENV = "ORCH_FAULT_FIGURES"


@dataclass
class Figures:
    scenario: str
    submitted: int
    stored: int
    lost: int
    duplicated: int
    overlaps: int
    runs: int
    runs_restarted: int
    completed_twice: int
    stray_runs: int
    dead_letters: int = 0
    wall_s: float = 0.0
    details: dict[str, list[str]] = field(default_factory=dict)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.scenario}.json"
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")
        return path


def _identity(result: RunResult) -> tuple[object, ...]:
    return (result.attempt, result.lease_generation, result.status, result.started_at)


def _run_key(job: JobSpec, models: dict[str, dict[str, Path]]) -> tuple[str, str, int]:
    """The ledger key of `job`'s llama-bench runs: box, model file, -d depth."""
    work = job.workload
    depth = max(0, job.context - work.prompt_tokens - work.gen_tokens)
    return (job.host, str(models[job.host][job.model]), depth)


def account(
    scenario: str,
    jobs: list[JobSpec],
    stores: list[Store],
    ledger: Ledger,
    published: list[RunResult],
    models: dict[str, dict[str, Path]],
    *,
    expected: dict[str, set[Status]] | None = None,
    dead_letters: int = 0,
    started: float = 0.0,
) -> Figures:
    """Count the scenario's outcome from the stores, the results published to the broker's
    stream (`Watch.published`) and the ledger.

    `models`: host -> model name -> file, as the agents' configs name them; `expected`: job
    id -> the statuses its final result may have (default: ok)."""
    details: dict[str, list[str]] = {}
    finals = {job.job_id: [_final(store, job.job_id) for store in stores] for job in jobs}
    lost = set()
    for job_id, results in finals.items():
        allowed = (expected or {}).get(job_id, {Status.OK})
        if not all(r is not None and r.status in allowed for r in results):
            lost.add(job_id)
            seen = [(r.status.value, (r.error or "")[:200]) if r else None for r in results]
            details.setdefault("lost", []).append(f"{job_id}: {seen}")
    duplicated = _duplicates(finals, published, details)

    keys = {_run_key(job, models): job.job_id for job in jobs}
    assert len(keys) == len(jobs), "two jobs share a ledger key: give each its own context"
    runs = ledger.ordered()
    per_job = Counter(keys[r.key] for r in runs if r.key in keys)
    completed = Counter(keys[r.key] for r in runs if r.key in keys and r.completed)
    stray = [r for r in runs if r.key not in keys]
    pairs = overlaps(runs)
    if pairs:
        details["overlaps"] = [
            f"{a.box}: {a.start:.3f}-{a.until:.3f} and {b.start:.3f}-{b.until:.3f}"
            for a, b in pairs
        ]
    if stray:
        details["stray runs"] = [str(r.key) for r in stray]
    return Figures(
        scenario=scenario,
        submitted=len(jobs),
        stored=len(jobs) - len(lost),
        lost=len(lost),
        duplicated=len(duplicated),
        overlaps=len(pairs),
        runs=len(runs),
        runs_restarted=sum(n - 1 for n in per_job.values()),
        completed_twice=sum(1 for n in completed.values() if n > 1),
        stray_runs=len(stray),
        dead_letters=dead_letters,
        wall_s=round(time.monotonic() - started, 1) if started else 0.0,
        details=details,
    )


def _final(store: Store, job_id: str) -> RunResult | None:
    return store.stored_result(job_id)


def _duplicates(
    finals: dict[str, list[RunResult | None]],
    published: list[RunResult],
    details: dict[str, list[str]],
) -> set[str]:
    """Jobs with two distinct reports in the stream, or whose stores and the stream's own
    final result (jobs/finality.py) are not all the same."""
    reports: dict[str, set[tuple[object, ...]]] = {}
    stream_final: dict[str, RunResult] = {}
    for result in published:
        if not eligible(result):
            continue  # a refusal by the wrong box is no report of the job's
        reports.setdefault(result.job_id, set()).add(_identity(result))
        if supersedes(result, stream_final.get(result.job_id)):
            stream_final[result.job_id] = result
    duplicated = set()
    for job_id, results in finals.items():
        if len(reports.get(job_id, ())) > 1:
            duplicated.add(job_id)
            seen = sorted(map(str, reports[job_id]))
            details.setdefault("reported twice", []).append(f"{job_id}: {seen}")
        keys = {order_key(r) for r in results if r is not None}
        if job_id in stream_final:
            keys.add(order_key(stream_final[job_id]))
        if len(keys) > 1:
            duplicated.add(job_id)
            differ = f"{job_id}: {sorted(map(str, keys))}"
            details.setdefault("final results differ", []).append(differ)
    return duplicated


def record(figures: Figures, folder: Path) -> None:
    """Write the figures to `folder` (also when the assertions below fail: a failed run's
    figures are figures too), then assert the guarantees."""
    figures.write(folder)
    assert figures.lost == 0, figures
    assert figures.duplicated == 0, figures
    assert figures.overlaps == 0, figures
    assert figures.stray_runs == 0, figures
    assert figures.stored == figures.submitted > 0, figures
