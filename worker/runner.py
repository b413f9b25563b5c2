"""Run one job from the queue on this box and record its result durably in the broker.

The Celery task is a thin shell around `execute`: it receives the job as JSON; the result goes
to the `orch:results` stream, which coordinator stores read whenever they next run. So no
result is lost while no coordinator is running.

Delivery is at-least-once (acks_late), so `execute` is written to be re-run safely:
- a job whose final result was already pushed is not run again: its stored result is pushed
  once more (a store that missed it gets it; one that has it ignores the copy);
- a job for another host or queue (a misrouted copy) is not run and gets no result: the copy in
  its own queue decides its outcome;
- each start counts an attempt (`orch:attempts:<id>`), only while the agent holds its box's
  lease (worker/lease.py); past MAX_DELIVERIES the job is recorded as an error instead of being
  run again (a job that kills its worker would loop forever otherwise);
- a result is published, stamped with the lease generation, only while the lease is still held
  and only if it supersedes the job's final result (jobs/finality.py): results only move forward;
- every result is written to the box's outbox (worker/outbox.py), synced to disk, before it is
  published, and stays there until a store has recorded it: a broker that is down for minutes,
  or that restarts without its data, never takes a measured run with it; the agent's heartbeat
  publishes it (again) once the broker is back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis as redis_lib
from pydantic import ValidationError

from jobs.acks import xadd_result
from jobs.backends import mislabelled_error
from jobs.engineoptions import job_option_problem
from jobs.facts import HostFacts
from jobs.progress import Phase
from jobs.protocol import FINAL_KEY, MAX_DELIVERIES
from jobs.result import (
    AppliedSetting,
    Cooldown,
    Disturbance,
    EngineInfo,
    RunResult,
    Status,
    oversized,
)
from jobs.spec import JobSpec
from jobs.telemetry import Telemetry
from jobs.version import ORCH_VERSION
from worker.config import WorkerConfig
from worker.cooldown import CooldownGate
from worker.disturbance import DisturbanceMonitor
from worker.engines import EngineOutcome, RunTarget, get_engine, registered
from worker.lease import Lease, LeaseLost, start_attempt
from worker.outbox import Entry, Outbox
from worker.progress import ProgressReporter
from worker.publish import publish
from worker.settings import RuntimeSettings, SettingError, build_setters, journal_in
from worker.telemetry import Sampler

log = logging.getLogger("orch.worker")

# How long a finished result waits for the broker before it is spooled to disk instead.
_PUSH_RETRY_S = (1, 2, 4, 8, 15, 30, 60, 60, 60, 60, 60, 60, 60, 60)


def execute(
    payload: dict[str, Any],
    config: WorkerConfig,
    redis: Any,
    spool: Path | None = None,
    facts: HostFacts | None = None,
    lease: Lease | None = None,
    outbox: Path | None = None,
    progress: ProgressReporter | None = None,
) -> RunResult | None:
    """Run `payload` (a JobSpec as JSON) and push its RunResult; None when nothing ran.

    `spool` holds the settings journal; the result is kept in `outbox` (worker/outbox.py; the
    agent's is per broker), `spool` itself when not given. `progress` (the agent's) hears
    each phase of the run (worker/progress.py); the caller sets it idle afterwards.

    Broker errors before the run propagate (the caller re-queues the message); after the run
    the result is kept at any cost. With `lease` (the agent's), LeaseLost when the lease is no
    longer this agent's, before the start or at the publish (the caller re-queues the message
    for the agent that holds it now).
    """
    started = datetime.now(UTC)
    keep = outbox if outbox is not None else spool
    try:
        job = JobSpec.model_validate(payload)
    except ValidationError as exc:
        return _refuse_invalid(payload, config, redis, exc, started)
    if job.host != config.host or job.queue != config.queue:
        # Refused without a trace in the results: a refusal by the wrong box would otherwise
        # count as the job's outcome (the transport dead-letters such copies before this).
        log.error("job %s for %s reached %s (host %s): not run, no result",
                  job.job_id, job.queue, config.queue, config.host)  # fmt: skip
        return None
    final = redis.get(FINAL_KEY.format(job_id=job.job_id))
    if final is not None:
        log.info("job %s already has a result: re-announced it, did not run again", job.job_id)
        xadd_result(redis, final)
        return None
    attempt, deliveries = start_attempt(redis, job.job_id, config.host, lease)
    if deliveries > MAX_DELIVERIES:
        reason = (
            f"gave up after {MAX_DELIVERIES} deliveries: the job never finished "
            "(its worker died each time it ran)"
        )
        return push(redis, _error_result(job, config, attempt, reason, started), keep, lease)
    problem = _refusal(job, config)
    if problem:
        return push(redis, _error_result(job, config, attempt, problem, started), keep, lease)

    log.info("running job %s (attempt %d): %s", job.job_id, attempt, job.axes())
    wrapped = _Wrapped()
    progress = progress if progress is not None else ProgressReporter(None, config.host)
    progress.start_job(job.job_id, job.campaign)
    try:
        outcome, telemetry = _measure(job, config, wrapped, spool, progress)
    except SettingError as exc:
        reason = f"runtime settings {job.settings} could not be applied, so it did not run: {exc}"
        result = _error_result(job, config, attempt, reason, started)
        return push(redis, result.model_copy(update={"settings": wrapped.settings}), keep, lease)
    result = _result(job, config, attempt, started, outcome).model_copy(
        update={
            "host_facts": _facts_as_run(facts, wrapped.settings),
            "telemetry": telemetry,
            "settings": wrapped.settings,
            "cooldown": wrapped.cooldown,
            "disturbance": wrapped.disturbance,
        }
    )
    log.info("job %s finished: %s", job.job_id, result.status.value)
    progress.phase(Phase.PUBLISHING)
    return push(redis, result, keep, lease)


class _Wrapped:
    """What the wrappers around a run saw (filled in even when applying settings fails)."""

    def __init__(self) -> None:
        self.settings: dict[str, AppliedSetting] = {}
        self.cooldown: Cooldown | None = None
        self.disturbance: Disturbance | None = None


def _facts_as_run(facts: HostFacts | None, settings: dict[str, AppliedSetting]) -> HostFacts | None:
    """The box's facts with the runtime settings it ran under, where the box read them back
    (detected once, at start). A setting that cannot be read back (a command) stays out of the
    facts: `RunResult.settings` says what was asked for."""
    read = {axis: a.read_back for axis, a in settings.items() if a.read_back is not None}
    if facts is None or not read:
        return facts
    update: dict[str, object] = {}
    sources = dict(facts.sources)
    for axis, value in read.items():
        sources[axis] = f"read back after orch set it by {settings[axis].method}: {value}"
        if axis == "platform_profile":
            update["platform_profile"] = value
        elif axis == "power_limit_w":
            update["power_cap_w"] = float(value)
    return facts.model_copy(update={**update, "sources": sources})


def _measure(
    job: JobSpec,
    config: WorkerConfig,
    wrapped: _Wrapped,
    spool: Path | None = None,
    progress: ProgressReporter | None = None,
) -> tuple[EngineOutcome, Telemetry | None]:
    """Run the engine inside the wrappers: runtime settings (applied first, restored last), the
    cool-down gate, then the telemetry sampler; phases come back relative to its start."""
    engine = get_engine(job.engine)  # first: it stops other engines' warm servers
    progress = progress if progress is not None else ProgressReporter(None, config.host)
    with contextlib.ExitStack() as stack:
        settings = RuntimeSettings(
            build_setters(config.setters, config.facts_root),
            job.settings,
            journal=journal_in(spool) if spool is not None else None,
        )
        stack.callback(lambda: setattr(wrapped, "settings", settings.record))
        stack.enter_context(settings)
        # Registered after the settings: it runs just before they are put back.
        stack.callback(progress.phase, Phase.RESTORING)
        if config.cooldown is not None:
            progress.phase(Phase.COOLDOWN)
            gate = stack.enter_context(CooldownGate(config.cooldown, root=config.facts_root))
            wrapped.cooldown = gate.record
        monitor = None
        if config.disturbance.enabled:
            # Inside the settings and the cool-down gate: their waits are not the run's.
            watcher = monitor = DisturbanceMonitor(config.disturbance, root=config.facts_root)
            # Registered first, so it runs after the monitor's exit has made the record.
            stack.callback(lambda: setattr(wrapped, "disturbance", watcher.record))
            stack.enter_context(monitor)
        sampler = None
        if config.telemetry_interval_s > 0:
            sampler = stack.enter_context(
                Sampler(interval_s=config.telemetry_interval_s, root=config.facts_root)
            )
        ec = config.engines[job.engine]
        target = RunTarget(
            binary=ec.backends[job.backend],
            model_path=config.models.get(job.model) if ec.url is None else None,
            timeout_s=min(job.timeout_s, config.max_job_timeout_s),
            threads=config.threads,
            on_process=_watchers(sampler, monitor),
            url=ec.url,
            served_model=ec.models.get(job.model),
            image=config.images.get(job.workload.image) if job.workload.image else None,
            api_key=ec.api_key,
            runtime_pin=ec.runtimes.get(job.backend),
            on_phase=progress.phase,
        )
        try:
            outcome = engine.run(job, target)
        except Exception as exc:  # an adapter bug must become a result, not a lost job
            log.exception("engine adapter %s crashed on job %s", job.engine, job.job_id)
            outcome = EngineOutcome(
                Status.ERROR,
                EngineInfo(name=job.engine, backend=job.backend, binary=str(target.binary)),
                error=f"engine adapter crashed: {exc!r}",
            )
    if sampler is None:
        return outcome, None
    outcome.phases = sampler.to_relative(outcome.phases)
    return outcome, sampler.summarize(outcome.phases)


def _watchers(sampler: Sampler | None, monitor: DisturbanceMonitor | None) -> Callable[[int], None]:
    """RunTarget.on_process: the engine's pid goes to the sampler and the disturbance monitor."""

    def watch(pid: int) -> None:
        for wrapper in (sampler, monitor):
            if wrapper is not None:
                wrapper.watch(pid)

    return watch


def _refuse_invalid(
    payload: Any, config: WorkerConfig, redis: Any, exc: ValidationError, started: datetime
) -> RunResult | None:
    """A message that is not a valid JobSpec (altered, or from another orch version).

    It gets an error result (attempt 0) so its submitter is not left waiting, but no final
    mark: a genuine message with the same id still runs, and its result (attempt >= 1) wins.
    """
    log.error("refused a malformed job message: %s", exc)
    if not (isinstance(payload, dict) and payload.get("job_id") and payload.get("campaign")):
        return None
    result = RunResult(
        job_id=str(payload["job_id"]),
        campaign=str(payload["campaign"]),
        host=config.host,
        queue=config.queue,
        attempt=0,
        status=Status.ERROR,
        error=f"invalid job: {exc}",
        declared=config.declared_facts(),
        started_at=started,
        finished_at=datetime.now(UTC),
        worker_version=ORCH_VERSION,
    )
    xadd_result(redis, result.model_dump_json())
    return result


def _refusal(job: JobSpec, config: WorkerConfig) -> str | None:
    """Why this box cannot run `job` (names only what its own config allows), or None."""
    engine = config.engines.get(job.engine)
    if engine is None:
        return f"engine {job.engine!r} is not configured on {config.host}"
    if job.engine not in registered():  # not get_engine: that would stop other warm servers
        return f"no engine adapter named {job.engine!r} (have: {', '.join(registered())})"
    if job.backend not in engine.backends:
        have = ", ".join(sorted(engine.backends))
        return f"backend {job.backend!r} of {job.engine} is not configured (have: {have})"
    image = job.workload.image
    if image is not None and image not in config.images:
        have = ", ".join(sorted(config.images)) or "none"
        return f"image {image!r} is not configured on {config.host} (have: {have})"
    have_models = config.models_for(job.engine)
    if job.model not in have_models:
        return f"model {job.model!r} is not configured (have: {', '.join(have_models)})"
    return job_option_problem(job)  # the same rule as the matrix check at submit


def _error_result(
    job: JobSpec, config: WorkerConfig, attempt: int, error: str, started: datetime
) -> RunResult:
    info = EngineInfo(name=job.engine, backend=job.backend, binary="")
    return _result(job, config, attempt, started, EngineOutcome(Status.ERROR, info, error=error))


def _result(
    job: JobSpec, config: WorkerConfig, attempt: int, started: datetime, outcome: EngineOutcome
) -> RunResult:
    status, error = _backend_verdict(outcome)
    return RunResult(
        job_id=job.job_id,
        campaign=job.campaign,
        host=config.host,
        queue=config.queue,
        attempt=attempt,
        status=status,
        error=error,
        measurements=outcome.measurements,
        engine=outcome.engine,
        declared=config.declared_facts(),
        argv=outcome.argv,
        phases=outcome.phases,
        requests=outcome.requests,
        load_time_s=outcome.load_time_s,
        backend_check=outcome.backend_check,
        load=outcome.load,
        started_at=started,
        finished_at=datetime.now(UTC),
        worker_version=ORCH_VERSION,
        job=job,
    )


def _backend_verdict(outcome: EngineOutcome) -> tuple[Status, str | None]:
    """A run that went well on another backend than its label is mislabelled: its figures stay
    in the result, but its status keeps every report from showing them under that label."""
    check = outcome.backend_check
    error = mislabelled_error(check) if check is not None else None
    if outcome.status is not Status.OK or error is None:
        return outcome.status, outcome.error
    return Status.MISLABELLED, error


def push(
    redis: Any, result: RunResult, spool: Path | None, lease: Lease | None = None
) -> RunResult:
    """Keep `result` in the box's outbox (`spool`), then publish it, retrying for minutes; if
    the broker stays away, the agent's heartbeat publishes it once the broker is back.

    It stays in the outbox, after it is published too, until a store has acknowledged it
    (worker/outbox.py). With `lease`, the result carries its generation; LeaseLost if the lease
    is gone (a result made without the lease is neither published nor kept).
    """
    if lease is not None:
        result = result.model_copy(update={"lease_generation": lease.generation})
        with contextlib.suppress(redis_lib.RedisError):  # unreachable: kept, checked at publish
            if not lease.keep(redis):
                raise LeaseLost(f"result of {result.job_id} refused: the {lease.host} lease "
                                "is not ours")  # fmt: skip
    result, body = _within_size(result)
    outbox = Outbox(spool) if spool is not None else None
    entry = _keep(outbox, result, body)
    try:
        for delay in (0, *_PUSH_RETRY_S):
            time.sleep(delay)
            try:
                entry_id = publish(redis, result, body, lease)
            except redis_lib.RedisError as exc:
                log.warning("cannot publish the result of %s yet: %s", result.job_id, exc)
                continue
            except LeaseLost:
                if outbox is not None and entry is not None:
                    outbox.drop(entry)
                raise
            if entry_id is None:
                log.warning("job %s already has a later result: this one is not published",
                            result.job_id)  # fmt: skip
            if outbox is not None and entry is not None:
                if entry_id is None:
                    outbox.drop(entry)
                else:
                    outbox.sent(entry, entry_id)
            return result
    finally:
        if entry is not None:  # whatever happened, the heartbeat may take it from here
            Outbox.release(entry)
    if entry is None:
        raise RuntimeError(f"result of job {result.job_id} could not be published or spooled")
    log.error("broker unreachable: result of %s kept in %s until it is back",
              result.job_id, entry.path)  # fmt: skip
    return result


def _within_size(result: RunResult) -> tuple[RunResult, str]:
    """`result` and its JSON, or an error result in its place when it is over the size every
    store takes (jobs/result.py)."""
    body = result.model_dump_json()
    if oversized(body) is None:
        return result, body
    result = _within_size_at_last(_shrunk(result, body))
    return result, result.model_dump_json()


def _shrunk(result: RunResult, body: str) -> RunResult:
    """An error result in place of one over the size every store takes (jobs/result.py): its
    bulky parts dropped, the reason naming the largest. What was measured is lost; saying so
    beats a result no store will ever read."""
    bulky = ("measurements", "requests", "telemetry", "load", "phases", "argv", "engine")
    sizes = {
        name: len(json.dumps(result.model_dump(mode="json", include={name}))) for name in bulky
    }
    largest = ", ".join(f"{n} {b / 2**20:.1f} MiB" for n, b in sorted(sizes.items(),
                        key=lambda kv: -kv[1])[:3])  # fmt: skip
    reason = f"{oversized(body)}; largest parts: {largest}; dropped, the run is not kept"
    log.error("result of %s: %s", result.job_id, reason)
    return result.model_copy(
        update={
            "status": Status.ERROR,
            "error": reason,
            "measurements": [],
            "requests": [],
            "telemetry": None,
            "load": None,
            "phases": [],
            "argv": [part[:4096] for part in result.argv[:64]],
            "engine": None,
        }  # fmt: skip
    )


def _within_size_at_last(result: RunResult) -> RunResult:
    """What is left of an oversized result once its run is dropped, if still too large (a huge
    prompt_text in its job, a forged fact): only the job's identity, the reason and the times."""
    if oversized(result.model_dump_json()) is None:
        return result
    return result.model_copy(
        update={
            "job": None,
            "declared": {},
            "host_facts": None,
            "settings": {},
            "disturbance": None,
            "backend_check": None,
            "cooldown": None,
            "argv": [],
            "error": (result.error or "")[:4096],
        }  # fmt: skip
    )


def _keep(outbox: Outbox | None, result: RunResult, body: str) -> Entry | None:
    """`body` on disk before it is published; None (logged) if the disk refuses it: it is
    still published, without a copy on the box."""
    if outbox is None:
        return None
    try:
        return outbox.keep(body)
    except OSError as exc:
        log.error("could not keep the result of %s on disk (%s): publishing it without a "
                  "copy on this box", result.job_id, exc)  # fmt: skip
        return None


def flush_spool(redis: Any, spool: Path) -> int:
    """Publish again the results in `spool` the broker does not hold (all checked, now);
    forget those a store acknowledged; return how many were published (Outbox.sweep)."""
    return Outbox(spool).sweep(redis)
