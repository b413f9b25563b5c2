"""Submit a matrix: expand, check against the fleet's inventory, publish, record.

Nothing is published unless every job is valid and runnable: the matrix is checked as a whole
first (file:line errors), then against what the workers said they have (host, engine, backend,
model, wire schema). A job is published only when it has no result and is not already waiting
in the broker, so submitting the same file again resumes a campaign: it re-queues only what was
lost (a broker that lost its data, an interrupted single-box run) and never duplicates work.

Example::

    outcome = submit(Path("matrix.yaml"), broker_url, store)
    outcome.campaign, len(outcome.published), outcome.notes
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis as redis_lib

from jobs.inventory import WorkerInventory
from jobs.protocol import ONLINE_WITHIN_S, REBOOT_GRACE_S
from jobs.result import RunResult, Status
from jobs.spec import JobSpec
from jobs.version import ORCH_VERSION, SCHEMA_VERSION
from orchestrator.broker import Fleet, Publisher, broker_time, connect, read_fleet, waiting_job_ids
from orchestrator.errors import SubmitError
from orchestrator.matrixfile import MatrixFile, load_matrix_file
from orchestrator.plan import PlanRow, context_warnings, plan
from orchestrator.store import Prediction, Store
from orchestrator.waiting import blocked_notes, blocked_on


@dataclass(frozen=True)
class SubmitOutcome:
    campaign: str
    jobs: list[JobSpec]
    published: list[JobSpec]  # queued now (new, or re-queued because the broker lost them)
    requeued: list[JobSpec]  # the part of `published` this store had submitted before
    done: list[JobSpec]  # already have a result
    waiting: list[JobSpec]  # already queued or running
    notes: list[str] = field(default_factory=list)  # what the user should know (not errors)
    skipped: list[JobSpec] = field(default_factory=list)  # predicted not to load, not queued
    # Doubts about what the jobs will measure (file:line), e.g. a context past the trained one.
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "jobs": len(self.jobs),
            "published": [j.job_id for j in self.published],
            "requeued": [j.job_id for j in self.requeued],
            "done": [j.job_id for j in self.done],
            "waiting": [j.job_id for j in self.waiting],
            "skipped": [j.job_id for j in self.skipped],
            "queues": sorted({j.queue for j in self.published}),
            "notes": self.notes,
            "warnings": self.warnings,
        }


def resolve_configurations(
    jobs: list[JobSpec], inventories: dict[str, WorkerInventory]
) -> list[JobSpec]:
    """A configuration axis a job does not name (the carve-out, the TTM limit) is the one its
    host is in now: `vram_split: 32G` on a box that also routes by its TTM limit waits for
    32G at that limit, instead of in a queue no configuration of the box ever consumes."""
    out = []
    for job in jobs:
        inv = inventories.get(job.host)
        if inv is not None and set(inv.configuration) - set(job.configuration):
            job = JobSpec.model_validate(
                {
                    **job.model_dump(exclude={"job_id"}),
                    "configuration": {**inv.configuration, **job.configuration},
                }
            )
        out.append(job)
    return out


def check_against_fleet(mf: MatrixFile, jobs: list[JobSpec], fleet: Fleet) -> list[str]:
    """Every reason a job cannot run on the fleet, each naming the matrix file and line."""
    problems: list[str] = []
    inventories = fleet.inventories
    known = ", ".join(sorted(inventories)) or "none: start `orch worker` on each box first"
    for job in jobs:
        inv = inventories.get(job.host)
        where = mf.where_value
        if job.host in fleet.unreadable:
            problems.append(
                f"{where('host', job.host)}: host {job.host}: "
                f"{fleet.unreadable[job.host]}; upgrade this coordinator"
            )
            continue
        if inv is None:
            problems.append(
                f"{where('host', job.host)}: unknown host {job.host!r} "
                f"(hosts that registered: {known})"
            )
            continue
        if inv.schema_version != SCHEMA_VERSION:
            problems.append(
                f"{where('host', job.host)}: host {job.host} runs orch {inv.version} "
                f"(job schema {inv.schema_version}, this orch speaks "
                f"{SCHEMA_VERSION}): upgrade one of them"
            )
            continue
        if job.engine not in inv.engines:
            have = ", ".join(sorted(inv.engines)) or "none"
            problems.append(
                f"{where('engine', job.engine)}: host {job.host} has no "
                f"engine {job.engine!r} (it has: {have})"
            )
        elif job.backend not in inv.engines[job.engine]:
            have = ", ".join(inv.engines[job.engine])
            problems.append(
                f"{where('backend', job.backend)}: host {job.host} has no "
                f"{job.backend!r} backend for {job.engine} (it has: {have})"
            )
        image = job.workload.image
        if image is not None and image not in inv.images:
            have = ", ".join(inv.images) or "none"
            problems.append(
                f"{mf.where_workload(job, 'image')}: host {job.host} has no image "
                f"{image!r} (it has: {have}; add it under `images:` in its config)"
            )
        problems += _settings_problems(mf, job, inv)
        if job.model not in inv.models_for(job.engine):
            have = ", ".join(inv.models_for(job.engine)) or "none"
            problems.append(
                f"{where('model', job.model)}: host {job.host} has no "
                f"model {job.model!r} (it has: {have})"
            )
    return list(dict.fromkeys(problems))  # one line per distinct problem, in order


def _settings_problems(mf: MatrixFile, job: JobSpec, inv: WorkerInventory) -> list[str]:
    """Runtime settings the host's owner did not allow, or outside the allowed values."""
    problems = []
    for axis, value in job.settings.items():
        where = _setting_where(mf, job, axis, value)
        setter = inv.setters.get(axis)
        if setter is None:
            problems.append(
                f"{where}: host {job.host} does not allow setting {axis} (add it under "
                "`setters:` in its worker config)"
            )
        elif setter.choices and value not in setter.choices:
            problems.append(
                f"{where}: host {job.host} offers {axis} {', '.join(setter.choices)}, not {value!r}"
            )
        elif axis == "power_limit_w":
            low, high = setter.min_w or 0.0, setter.max_w or float("inf")
            if not low <= float(value) <= high:
                problems.append(
                    f"{where}: host {job.host} allows {axis} {low:g}-{high:g} W, not {value} W"
                )
    return problems


def _setting_where(mf: MatrixFile, job: JobSpec, axis: str, value: str) -> str:
    """Where the matrix gave `job` this setting: its named configuration, the axis, or an
    include entry for its host."""
    config = mf.matrix.configurations.get(job.config_name or "")
    if config is not None and axis in config.named():
        return mf.where(("configurations", job.config_name or "", axis))
    listed = float(value) if axis == "power_limit_w" else value
    if listed in getattr(mf.matrix.matrix, axis):
        return mf.where_value(axis, listed)
    for i, entry in enumerate(mf.matrix.include):
        if entry.host == job.host and getattr(entry, axis) == listed:
            return mf.where(("include", i, axis))
    return mf.where((axis,))


def submit(
    path: Path,
    broker_url: str,
    store: Store,
    *,
    skip_predicted_failures: bool = False,
    model_files: dict[str, Path] | None = None,
) -> SubmitOutcome:
    """Queue what `path` asks for; with `skip_predicted_failures`, jobs the planner says will
    not load are recorded as skipped (with the numbers) instead of queued."""
    mf = load_matrix_file(path)
    client = connect(broker_url)
    fleet = read_fleet(client)
    jobs = resolve_configurations(mf.jobs, fleet.inventories)
    problems = check_against_fleet(mf, jobs, fleet)
    if problems:
        raise SubmitError(problems)
    planned = plan(jobs, model_files or {}, fleet)
    predictions = {row.job.job_id: row for row in planned}
    store.collect(client)  # results that finished since the last look
    ids = [j.job_id for j in jobs]
    finished = store.finished_job_ids(ids)
    skipped_before = store.skipped_job_ids(ids)
    # A skipped job runs when asked to run everything, or when it is no longer predicted to
    # fail (a reboot into a larger carve-out, a better --model file).
    finished -= {
        j for j in skipped_before
        if not skip_predicted_failures or not _will_not_load(predictions[j])
    }  # fmt: skip
    # Jobs this store submitted before and that are not queued now: the broker lost them,
    # unless `orch cancel` took them out (then submitting again resumes them).
    lost = store.known_job_ids(ids) - store.cancelled_job_ids(ids)
    in_broker = waiting_job_ids(client)
    done = [j for j in jobs if j.job_id in finished]
    waiting = [j for j in jobs if j.job_id not in finished and j.job_id in in_broker]
    todo = [j for j in jobs if j.job_id not in finished and j.job_id not in in_broker]
    skipped = [j for j in todo if skip_predicted_failures and _will_not_load(predictions[j.job_id])]
    skipped_ids = {j.job_id for j in skipped}
    # Queues are FIFO: publishing each host's jobs grouped by what they load makes them run
    # back to back on a warm server (the fewest model loads); within a group, jobs that share
    # runtime settings run together.
    fresh = sorted(
        (j for j in todo if j.job_id not in skipped_ids),
        key=lambda j: (j.load_group(), sorted(j.settings.items())),
    )
    publisher = Publisher(broker_url)
    try:
        store.record_campaign(mf.matrix.campaign, str(path.resolve()), mf.text)
        # The verdict each job is queued (or skipped) under; a finished job keeps the one its
        # outcome is checked against.
        store.record_predictions(_predictions(predictions[j.job_id] for j in [*fresh, *skipped]))
        if skipped:
            with store.transaction():
                for job in skipped:
                    store.record_job(job)
                    store.upsert_result(skipped_result(job, predictions[job.job_id]))
        # Each batch of jobs is recorded (committed) right after it is queued: a broker failure
        # half-way leaves the store saying what was queued, and a re-submit publishes the rest.
        # A skipped job that runs now loses its `skipped` result in the same transaction.
        publisher.publish_many(
            fresh, on_published=lambda batch: store.record_jobs(batch, skipped_before)
        )
    finally:
        publisher.close()
    notes = blocked_notes(fresh + waiting, fleet.inventories, broker_time(client))
    requeued = [j for j in fresh if j.job_id in lost and j.job_id not in skipped_before]
    return SubmitOutcome(
        mf.matrix.campaign, jobs, fresh, requeued, done, waiting, notes, skipped=skipped,
        warnings=context_warnings(mf, planned),
    )  # fmt: skip


def _will_not_load(row: PlanRow) -> bool:
    return row.verdict is not None and row.verdict.kind == "will not load"


def _predictions(rows: Iterable[PlanRow]) -> Iterator[tuple[str, Prediction]]:
    """(job id, prediction) of each row the planner gave a verdict."""
    for row in rows:
        if row.verdict is not None:
            text = row.verdict.text() + (f" ({row.facts_note})" if row.facts_note else "")
            yield row.job.job_id, Prediction(row.verdict.kind, row.verdict.needs_bytes, text)


def skipped_result(job: JobSpec, row: PlanRow) -> RunResult:
    """The coordinator's result for a job it did not queue: the prediction, with its numbers."""
    assert row.verdict is not None
    now = datetime.now(UTC)
    text = row.verdict.oom_text()
    return RunResult(
        job_id=job.job_id,
        campaign=job.campaign,
        host=job.host,
        queue=job.queue,
        attempt=0,
        status=Status.SKIPPED,
        error=text + (f" ({row.facts_note})" if row.facts_note else ""),
        started_at=now,
        finished_at=now,
        worker_version=ORCH_VERSION,
        job=job,
    )


@dataclass(frozen=True)
class Progress:
    total: int
    finished: int
    # Set when every job still to run waits for a human (a reboot, a worker): what to do.
    blocked: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self.finished >= self.total


def progress(store: Store, campaign: str) -> Progress:
    rows = store.campaign_jobs(campaign)
    return Progress(len(rows), sum(1 for r in rows if r.settled))


def blocked_progress(store: Store, client: Any, campaign: str) -> Progress:
    """`progress`, plus the instructions when nothing left can run without a human."""
    rows = store.campaign_jobs(campaign)
    state = Progress(len(rows), sum(1 for r in rows if r.settled))
    pending = [r.spec for r in rows if not r.settled]
    if not pending:
        return state
    fleet, now = read_fleet(client), broker_time(client)
    if any(blocked_on(j, fleet.inventories.get(j.host), now) is None for j in pending):
        return state
    notes = blocked_notes(pending, fleet.inventories, now)
    return Progress(state.total, state.finished, tuple(notes))


def wait_for(
    store: Store,
    client: Any,
    campaign: str,
    *,
    timeout_s: float | None = None,
    poll_s: float = 1.0,
    wait_for_reconfiguration: bool = False,
    outage_s: float = REBOOT_GRACE_S,
    on_progress: Callable[[Progress], None] = lambda _p: None,
    on_outage: Callable[[str], None] = lambda _m: None,
) -> Progress:
    """Collect results until every job of `campaign` has one, the timeout passes, or (unless
    `wait_for_reconfiguration`) every job left waits for a human: then `blocked` says what to
    do. Jobs count as waiting for a human only once they have for ONLINE_WITHIN_S, so a
    worker restarting (`orch local stop && orch local start`) does not end the wait.

    The broker may go away for a while (the one-box service stops while its box reboots):
    up to `outage_s` the wait goes on, saying so once through `on_outage`."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    blocked_since: float | None = None
    outage_since: float | None = None
    while True:
        try:
            store.collect(client)
            state = (
                progress(store, campaign)
                if wait_for_reconfiguration
                else blocked_progress(store, client, campaign)
            )
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            if outage_since is None:
                outage_since = time.monotonic()
                on_outage(f"the broker is not answering ({exc}); waiting for it to come back")
            if time.monotonic() - outage_since > outage_s:
                raise
            if deadline is not None and time.monotonic() > deadline:
                return progress(store, campaign)
            time.sleep(min(poll_s * 2, 5.0))
            continue
        if outage_since is not None:
            on_outage("the broker is back")
            outage_since = None
        on_progress(state)
        if state.done or (deadline is not None and time.monotonic() > deadline):
            return state
        if state.blocked:
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since >= ONLINE_WITHIN_S:
                return state
        else:
            blocked_since = None
        time.sleep(poll_s)
