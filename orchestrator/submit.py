"""Submit a matrix: expand, check against the fleet's inventory, publish, record.

Nothing is published unless every job is valid and runnable: the matrix is checked as a whole
first (file:line errors), then against what the workers said they have (host, engine, backend,
model). Jobs already submitted (same deterministic id) are not published again.

Example::

    outcome = submit(Path("matrix.yaml"), broker_url, store)
    outcome.campaign, len(outcome.published), len(outcome.skipped)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.inventory import WorkerInventory
from jobs.spec import JobSpec
from orchestrator.broker import Publisher, connect, read_inventories
from orchestrator.errors import SubmitError
from orchestrator.matrixfile import MatrixFile, load_matrix_file
from orchestrator.store import Store


@dataclass(frozen=True)
class SubmitOutcome:
    campaign: str
    jobs: list[JobSpec]
    published: list[JobSpec]
    skipped: list[JobSpec]  # already submitted earlier

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "jobs": len(self.jobs),
            "published": [j.job_id for j in self.published],
            "skipped": [j.job_id for j in self.skipped],
            "queues": sorted({j.queue for j in self.published}),
        }


def check_against_fleet(mf: MatrixFile, inventories: dict[str, WorkerInventory]) -> list[str]:
    """Every reason a job cannot run on the fleet, each naming the matrix file and line."""
    problems: list[str] = []
    known = ", ".join(sorted(inventories)) or "none: start `orch worker` on each box first"
    for job in mf.jobs:
        inv = inventories.get(job.host)
        if inv is None:
            problems.append(
                f"{mf.where_value('host', job.host)}: unknown host {job.host!r} "
                f"(hosts that registered: {known})"
            )
            continue
        if job.engine not in inv.engines:
            have = ", ".join(sorted(inv.engines)) or "none"
            problems.append(
                f"{mf.where_value('engine', job.engine)}: host {job.host} has no "
                f"engine {job.engine!r} (it has: {have})"
            )
        elif job.backend not in inv.engines[job.engine]:
            have = ", ".join(inv.engines[job.engine])
            problems.append(
                f"{mf.where_value('backend', job.backend)}: host {job.host} has no "
                f"{job.backend!r} backend for {job.engine} (it has: {have})"
            )
        if job.model not in inv.models:
            have = ", ".join(inv.models) or "none"
            problems.append(
                f"{mf.where_value('model', job.model)}: host {job.host} has no "
                f"model {job.model!r} (it has: {have})"
            )
    return list(dict.fromkeys(problems))  # one line per distinct problem, in order


def submit(path: Path, broker_url: str, store: Store) -> SubmitOutcome:
    mf = load_matrix_file(path)
    client = connect(broker_url)
    problems = check_against_fleet(mf, read_inventories(client))
    if problems:
        raise SubmitError(problems)
    known = store.known_job_ids([j.job_id for j in mf.jobs])
    fresh = [j for j in mf.jobs if j.job_id not in known]
    skipped = [j for j in mf.jobs if j.job_id in known]
    publisher = Publisher(broker_url)
    try:
        store.record_campaign(mf.matrix.campaign, str(path.resolve()), mf.text)
        # Each job is recorded (committed) right after it is published: a broker failure half-way
        # leaves the store saying exactly what is queued, and a re-submit publishes the rest.
        for job in fresh:
            publisher.publish([job])
            store.record_job(job)
    finally:
        publisher.close()
    return SubmitOutcome(mf.matrix.campaign, mf.jobs, fresh, skipped)


@dataclass(frozen=True)
class Progress:
    total: int
    finished: int

    @property
    def done(self) -> bool:
        return self.finished >= self.total


def progress(store: Store, campaign: str) -> Progress:
    rows = store.campaign_jobs(campaign)
    return Progress(len(rows), sum(1 for r in rows if r.result is not None))


def wait_for(
    store: Store,
    client: Any,
    campaign: str,
    *,
    timeout_s: float | None = None,
    poll_s: float = 1.0,
    on_progress: Callable[[Progress], None] = lambda _p: None,
) -> Progress:
    """Collect results until every job of `campaign` has one (or the timeout passes)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        store.collect(client)
        state = progress(store, campaign)
        on_progress(state)
        if state.done or (deadline is not None and time.monotonic() > deadline):
            return state
        time.sleep(poll_s)
