"""Run one job from the queue on this box and record its result durably in the broker.

The Celery task is a thin shell around `execute`: it receives the job as JSON and returns
nothing useful; the result goes to the `orch:results` list, which the coordinator drains into
its store whenever it next runs. So no result is lost while no coordinator is running.

Delivery is at-least-once (acks_late), so `execute` is written to be re-run safely:
- a job whose final result was already pushed is skipped (`orch:final:<id>`);
- each start counts an attempt (`orch:attempts:<id>`); past MAX_DELIVERIES the job is recorded as
  an error instead of being run again (a job that kills its worker would loop forever otherwise).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from jobs.protocol import ATTEMPTS_KEY, FINAL_KEY, MAX_DELIVERIES, RESULTS_KEY
from jobs.result import EngineInfo, RunResult, Status
from jobs.spec import JobSpec
from jobs.version import ORCH_VERSION
from worker.config import WorkerConfig
from worker.engines import RunTarget, get_engine

log = logging.getLogger("orch.worker")

# Attempt counters outlive the job by this long (they only guard against redelivery loops).
_ATTEMPTS_TTL_S = 7 * 24 * 3600


def execute(payload: dict[str, Any], config: WorkerConfig, redis: Any) -> RunResult | None:
    """Run `payload` (a JobSpec as JSON) and push its RunResult; None when it was a duplicate."""
    started = datetime.now(UTC)
    try:
        job = JobSpec.model_validate(payload)
    except ValidationError as exc:
        log.error("rejected a malformed job message: %s", exc)
        if isinstance(payload, dict) and payload.get("job_id") and payload.get("campaign"):
            return _push(redis, _failure(payload, config, 0, f"invalid job: {exc}", started))
        return None
    if redis.exists(FINAL_KEY.format(job_id=job.job_id)):
        log.info("job %s already has a result: duplicate delivery skipped", job.job_id)
        return None
    attempts_key = ATTEMPTS_KEY.format(job_id=job.job_id)
    attempt = int(redis.incr(attempts_key))
    redis.expire(attempts_key, _ATTEMPTS_TTL_S)
    spec = job.model_dump(mode="json")
    if attempt > MAX_DELIVERIES:
        reason = (
            f"gave up after {MAX_DELIVERIES} deliveries: the job never finished "
            "(its worker died each time it ran)"
        )
        return _push(redis, _failure(spec, config, attempt, reason, started, job))
    problem = _refusal(job, config)
    if problem:
        return _push(redis, _failure(spec, config, attempt, problem, started, job))

    log.info("running job %s (attempt %d): %s", job.job_id, attempt, job.axes())
    target = RunTarget(
        binary=config.engines[job.engine].backends[job.backend],
        model_path=config.models[job.model],
        timeout_s=min(job.timeout_s, config.max_job_timeout_s),
        threads=config.threads,
    )
    outcome = get_engine(job.engine).run(job, target)
    result = RunResult(
        job_id=job.job_id,
        campaign=job.campaign,
        host=config.host,
        queue=config.queue,
        attempt=attempt,
        status=outcome.status,
        error=outcome.error,
        measurements=outcome.measurements,
        engine=outcome.engine,
        declared=config.declared_facts(),
        argv=outcome.argv,
        started_at=started,
        finished_at=datetime.now(UTC),
        worker_version=ORCH_VERSION,
        job=job,
    )
    log.info("job %s finished: %s", job.job_id, result.status.value)
    return _push(redis, result)


def _refusal(job: JobSpec, config: WorkerConfig) -> str | None:
    """Why this box cannot run `job` (names only what its own config allows), or None."""
    if job.host != config.host or job.queue != config.queue:
        return f"job for {job.queue} reached {config.queue} (host {config.host})"
    engine = config.engines.get(job.engine)
    if engine is None:
        return f"engine {job.engine!r} is not configured on {config.host}"
    try:
        get_engine(job.engine)
    except KeyError as exc:
        return str(exc.args[0])
    if job.backend not in engine.backends:
        have = ", ".join(sorted(engine.backends))
        return f"backend {job.backend!r} of {job.engine} is not configured (have: {have})"
    if job.model not in config.models:
        return f"model {job.model!r} is not configured (have: {', '.join(sorted(config.models))})"
    return None


def _failure(
    spec: dict[str, Any],
    config: WorkerConfig,
    attempt: int,
    error: str,
    started: datetime,
    job: JobSpec | None = None,
) -> RunResult:
    return RunResult(
        job_id=str(spec["job_id"]),
        campaign=str(spec["campaign"]),
        host=config.host,
        queue=config.queue,
        attempt=attempt,
        status=Status.ERROR,
        error=error,
        engine=EngineInfo(
            name=str(spec.get("engine", "?")), backend=str(spec.get("backend", "?")), binary=""
        ),
        declared=config.declared_facts(),
        started_at=started,
        finished_at=datetime.now(UTC),
        worker_version=ORCH_VERSION,
        job=job,
    )


def _push(redis: Any, result: RunResult) -> RunResult:
    """Append the result to the durable outbox and mark the job final, atomically."""
    pipe = redis.pipeline(transaction=True)
    pipe.rpush(RESULTS_KEY, result.model_dump_json())
    pipe.set(FINAL_KEY.format(job_id=result.job_id), result.status.value)
    pipe.execute()
    return result
