"""The agent on a test box: one Celery worker on this host's current configuration queue.

Start-up order matters:
1. take the box's lease, so two agents never benchmark on one box at once; each acquisition
   is a new generation, the fencing token every job start and result carries (worker/lease.py
   says what that guarantees, and its limit);
2. wait until no earlier holder of the lease still lives on this box (a frozen or cut-off
   agent whose lease expired may still be running a benchmark), then give back messages such a
   dead predecessor had taken but not acknowledged, in any of the box's configuration queues
   (Redis has no real acks: they would otherwise wait for the visibility timeout, hours);
3. publish again the results in the box's outbox that the broker does not hold (it was away,
   or restarted without its data: worker/outbox.py), and forget those a store recorded;
4. publish the inventory, then keep it and the lease fresh from a heartbeat thread;
5. consume with the solo pool: one job at a time, in this process, on every platform.

Every popped message is checked before kombu, Celery or the runner sees it (worker/transport.py);
one that is not a job for this queue goes to the dead-letter list (jobs/deadletter.py) and the
agent goes on. If Celery still stops on an error, the agent exits non-zero, so systemd
(`Restart=on-failure`) or the one-box supervisor starts it again.

If the lease is ever lost to another agent, this one stops consuming (warm shutdown): the job
under way cannot publish its result, and goes back to its queue for the new holder.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import redis as redis_lib
from celery import Celery
from celery.exceptions import Reject
from kombu.entity import Exchange, Queue
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from jobs.deadletter import move_from_unacked, push_dead_letter
from jobs.facts import HostFacts
from jobs.inventory import SetterInfo, WorkerInventory
from jobs.modelshape import ModelShape, read_model_shape
from jobs.paths import orch_home
from jobs.protocol import (
    INVENTORY_KEY,
    LEASE_TTL_S,
    TASK_NAME,
    InvalidMessage,
    celery_settings,
    unacked_parts,
)
from jobs.spec import CONFIGURATION_AXES, configuration_of, host_of_queue
from jobs.version import ORCH_VERSION
from worker.config import WorkerConfig
from worker.cooldown import CooldownGate
from worker.engines import close_engines
from worker.errors import ConfigError, ConsumerStoppedError, QueueBusyError
from worker.facts import conflicts, detect_host_facts
from worker.lease import Holder, Lease, LeaseLost
from worker.outbox import Outbox, adopt_old_files, outbox_folder
from worker.progress import ProgressReporter
from worker.reconfigure import Reconfigurer
from worker.runner import execute
from worker.settings import build_setters, journal_in, recover_settings
from worker.transport import requeue_unacked, use_checked_transport
from worker.unattended import Unattended

log = logging.getLogger("orch.worker")

_SKEW_WARN_S = 30.0
_PREDECESSOR_NOTE_S = 60.0  # how often a wait for a predecessor to exit is logged again


class Agent:
    """Everything one `orch worker` process does besides running jobs."""

    def __init__(self, config: WorkerConfig, broker_url: str) -> None:
        self.config = config
        self.broker_url = broker_url
        self.redis = redis_lib.Redis.from_url(
            broker_url,
            socket_keepalive=True,
            socket_timeout=60,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=10), 5),
            retry_on_error=[redis_lib.ConnectionError, redis_lib.TimeoutError],
        )
        self.spool = orch_home() / "spool" / config.host  # the settings journal, the outboxes
        self.outbox = Outbox(outbox_folder(self.spool, broker_url))
        self.facts: HostFacts | None = None
        self.setters: dict[str, SetterInfo] = {}
        self.model_shapes: dict[str, ModelShape] = {}
        self.lease = Lease(config.host)
        self.instance_id = self.lease.instance
        self.started_at = time.time()
        self.clock_skew_s: float | None = None
        self.waiting_for: str | None = None  # earlier holders still on the box (see inventory)
        self._stop = threading.Event()
        self._lease_lost = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.unattended: Unattended | None = None
        self.busy = False  # a job runs now (the heartbeat never reconfigures under one)
        # What the job under way is doing, for `orch status` (jobs/progress.py).
        self.progress = ProgressReporter(self.redis, config.host, clock=self._broker_clock)
        self.job_lock = threading.Lock()  # `busy` and the decision to switch, together
        self.app = self._make_app()

    # -- lifecycle ---------------------------------------------------------------------------

    def detect(self) -> HostFacts:
        """Fingerprint the box; refuse to run mislabelled benchmarks (declared != detected)."""
        binaries = {
            f"{engine}/{backend}": path
            for engine, ec in self.config.engines.items()
            for backend, path in ec.backends.items()
            if path is not None
        }
        facts = detect_host_facts(
            self.config.facts_root, binaries=binaries, models=self.config.models,
            cache_dir=orch_home() / "facts",
        )  # fmt: skip
        self._adopt_detected_configuration(facts)
        problems = conflicts(self.config.declared_facts(), facts)
        if problems and self.config.check_declared:
            raise ConfigError(
                f"refusing to consume {self.config.queue}: "
                + "; ".join(problems)
                + ". Fix `declared:` in the config (or reboot into the declared setting)."
            )
        for problem in problems:
            log.warning("declared fact disagrees (check_declared is off): %s", problem)
        setters = build_setters(self.config.setters, self.config.facts_root)
        for axis, error in recover_settings(setters, journal_in(self.spool)).items():
            if error:  # the box may be left in a job's setting: say so loudly, run anyway
                log.error("could not put %s back after an interrupted job: %s", axis, error)
        self.setters = {axis: setter.info() for axis, setter in setters.items()}
        if self.config.cooldown is not None:
            gate = CooldownGate(self.config.cooldown, root=self.config.facts_root)
            for missing in gate.missing_readings():
                log.warning(
                    "cool-down: nothing on this box reads %s: every job will wait the full "
                    "timeout_s (%.0f s) and be marked not settled",
                    missing, self.config.cooldown.timeout_s,
                )  # fmt: skip
        self.model_shapes = _model_shapes(self.config.models)
        if self.config.reconfigure is not None:
            reconfigurer = Reconfigurer(
                self.config.reconfigure,
                root=self.config.facts_root,
                state_dir=orch_home() / "reconfigure" / self.config.host,
            )
            self.unattended = Unattended(
                self.config, reconfigurer, self.redis, broker_now=self._broker_now,
                publish=self._publish_quietly, job_lock=self.job_lock,
                is_busy=lambda: self.busy,
            )  # fmt: skip
            self.unattended.at_start(configuration_of(facts.model_dump()))
        return facts

    def _adopt_detected_configuration(self, facts: HostFacts) -> None:
        """With `detect_configuration` (or `reconfigure:`), a carve-out the config does not
        declare is the one the box booted with, so after a reboot into another one the agent
        consumes that configuration's queue without anyone editing worker.yaml. The TTM limit
        is adopted only where the owner lets the agent switch it: its kernel default moves
        with the carve-out, and routing by it would split queues for nothing."""
        rc = self.config.reconfigure
        if not (self.config.detect_configuration or rc is not None):
            return
        declared = self.config.declared
        for axis in CONFIGURATION_AXES:
            detected = getattr(facts, axis, None)
            if axis != "vram_split" and (rc is None or axis not in rc.axes):
                continue
            if getattr(declared, axis) is None and detected is not None:
                setattr(declared, axis, detected)
                log.info("%s %s detected (not declared): consuming %s", axis, detected,
                         self.config.queue)  # fmt: skip

    def run(self, lease_wait_s: float = 2.5 * LEASE_TTL_S) -> None:
        """Block consuming jobs until the worker is told to stop (SIGTERM/SIGINT)."""
        if threading.current_thread() is threading.main_thread():
            # Until Celery installs its own handlers, a SIGTERM must still unwind through the
            # `finally` below (lease released, inventory marked stopped), not kill us outright.
            signal.signal(signal.SIGTERM, _exit_on_signal)
        self.facts = self.detect()
        self.acquire_lease(lease_wait_s)
        try:
            self.wait_for_predecessors()
            self.check_clock()
            restored = self.restore_orphans()
            if restored:
                log.warning("re-queued %d job(s) left unacknowledged by a dead worker", restored)
            try:
                if adopt_old_files(self.spool, self.outbox.folder):
                    log.info("results an older orch spooled go to %s", self.outbox.folder)
            except OSError as exc:  # they stay where they are; the agent still starts
                log.error("could not move results an older orch spooled in %s: %s",
                          self.spool, exc)  # fmt: skip
            self._sweep_outbox()
            self.publish_inventory()
            self.progress.idle()
            heartbeat = threading.Thread(target=self._beat, name="orch-heartbeat", daemon=True)
            heartbeat.start()
            # Known to `finally` only once started: a SIGTERM between the two lines would
            # otherwise make its join raise, and the box would never be announced stopped.
            self._heartbeat = heartbeat
            log.info("%s consumes %s", self.config.host, self.config.queue)
            worker = self.app.Worker(
                queues=[self.config.queue],
                pool="solo",
                concurrency=1,
                hostname=f"orch@{self.config.host}.{self.instance_id[:8]}",
                without_gossip=True,
                without_mingle=True,
                without_heartbeat=True,
                loglevel="INFO",
            )
            worker.start()
            if worker.exitcode:  # Celery logged why; it returns instead of exiting non-zero
                raise ConsumerStoppedError(
                    f"the Celery consumer stopped with exit code {worker.exitcode} (an "
                    "unrecoverable error logged above, or an interrupt): exiting non-zero so "
                    "that a supervisor starts the agent again"
                )
        finally:
            self._stop.set()
            if self._heartbeat is not None:
                # A beat under way would publish the inventory again after the "stopped"
                # one below, and the box would look online for another 15 s.
                self._heartbeat.join(timeout=2 * self.lease.heartbeat_s)
            close_engines()
            self.release_lease()
            self._announce_stop()

    def acquire_lease(self, wait_s: float = 2.5 * LEASE_TTL_S) -> None:
        """Own this box; wait for a crashed predecessor's lease to lapse, refuse a live one."""
        deadline = time.monotonic() + wait_s
        announced = False
        while (holder := self.lease.acquire(self.redis)) is not None:
            if time.monotonic() > deadline:
                raise QueueBusyError(
                    f"another live worker runs host {self.config.host} ({holder!r}); "
                    "benchmarks on one box must not overlap: stop it first"
                )
            if not announced:
                log.info("waiting for the lease on %s (a previous worker may have died)",
                         self.lease.key)  # fmt: skip
                announced = True
            time.sleep(1.0)

    def wait_for_predecessors(self) -> None:
        """Hold the lease, run nothing, until every earlier holder is gone from this box.

        An agent frozen (SIGSTOP, swapped out) or cut off from the broker longer than the lease
        lost it, but its process, and the benchmark it started, may still run: starting
        another job, or re-queueing its job, would overlap two benchmarks on one box. When it
        comes back it finds the lease taken, cannot publish, gives its job back and exits.
        """
        noted: float | None = None
        published = 0.0
        while waiting := self.lease.live_predecessors(self.redis):
            if noted is None or time.monotonic() - noted > _PREDECESSOR_NOTE_S:
                log.warning("waiting for %s to exit before running anything: %s",
                            _holders(waiting), "it lost the lease but still runs on this box "
                            "(frozen, or cut off from the broker)")  # fmt: skip
                noted = time.monotonic()
            if not self.lease.keep(self.redis):
                raise QueueBusyError(
                    f"another worker took host {self.config.host} while this one waited for "
                    f"{_holders(waiting)} to exit"
                )
            if time.monotonic() - published >= self.lease.heartbeat_s:
                # Seen as online and waiting, not as an offline box (`orch hosts`, `status`).
                self.waiting_for = _holders(waiting)
                self.publish_inventory()
                published = time.monotonic()
            self._stop.wait(min(1.0, self.lease.heartbeat_s))
        self.waiting_for = None

    def release_lease(self) -> None:
        try:
            self.lease.release(self.redis)
        except redis_lib.RedisError:
            pass  # the lease expires by itself

    def check_clock(self) -> None:
        """Kombu compares delivery times written by one box on another: warn on gross skew."""
        seconds, micros = self.redis.time()
        self.clock_skew_s = round(seconds + micros / 1e6 - time.time(), 3)
        if abs(self.clock_skew_s) > _SKEW_WARN_S:
            log.warning(
                "this box's clock is %.0f s off the broker's: enable NTP, or redelivery "
                "timing across boxes goes wrong",
                self.clock_skew_s,
            )

    def restore_orphans(self) -> int:
        """Put back this box's messages that are delivered but unacknowledged.

        Only one live agent holds the box's lease, and this one has not consumed yet, so any
        such message belongs to an agent of this box that died mid-job (perhaps in another
        configuration: the message goes back to its own configuration's queue). It goes to the
        consuming end of its queue, so the interrupted job runs next.
        """
        queue = self.config.queue
        restored = 0
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            Queue(queue, Exchange(queue), routing_key=queue)(channel).declare()
            client = channel.client
            for tag, raw in client.hgetall(channel.unacked_key).items():
                try:
                    _message, routing_key = unacked_parts(raw)
                    if host_of_queue(routing_key) == self.config.host:
                        requeue_unacked(channel, client, tag)
                        restored += 1
                except InvalidMessage as exc:  # kombu's own restore would choke on it
                    move_from_unacked(client, tag, raw, str(exc), self._source)
                    log.error("dead-lettered an unreadable unacked entry: %s", exc)
        return restored

    @property
    def _source(self) -> str:
        return f"worker {self.config.host}"

    def _dead_letter(self, raw: bytes, queue: str, reason: str) -> None:
        """A popped message that is not a job for `queue`: keep it aside, never run it."""
        log.error("dead-lettered a message from %s: %s", queue, reason)
        try:
            push_dead_letter(self.redis, raw, queue, reason, self._source)
        except redis_lib.RedisError as exc:  # popped already: the log is all that is left
            log.error("could not dead-letter it (%s); it started: %r", exc, raw[:300])

    def inventory(self) -> WorkerInventory:
        return WorkerInventory(
            host=self.config.host,
            queue=self.config.queue,
            configuration=self.config.configuration,
            declared=self.config.declared_facts(),
            engines={name: sorted(ec.backends) for name, ec in self.config.engines.items()},
            models=sorted(self.config.models),
            images=sorted(self.config.images),
            engine_models={
                name: sorted(ec.models) for name, ec in self.config.engines.items() if ec.url
            },
            setters=self.setters,
            model_shapes=self.model_shapes,
            version=ORCH_VERSION,
            instance_id=self.instance_id,
            pid=os.getpid(),
            started_at=self.started_at,
            last_seen=self._broker_now(),
            clock_skew_s=self.clock_skew_s,
            facts=self.facts,
            reconfigure=self.unattended.info() if self.unattended is not None else None,
            waiting_for=self.waiting_for,
        )

    def _announce_stop(self) -> None:
        try:
            key = INVENTORY_KEY.format(host=self.config.host)
            current = self.redis.get(key)
            if current and json.loads(current).get("instance_id") != self.instance_id:
                return  # another agent of this box has taken over: its inventory stands
            body = self.inventory().model_copy(update={"stopped": True}).model_dump_json()
            self.redis.set(key, body)
        except redis_lib.RedisError:
            pass  # it will read as offline once its heartbeats are old enough

    def _publish_quietly(self) -> None:
        try:
            self.publish_inventory()
        except redis_lib.RedisError as exc:
            log.warning("could not publish the inventory: %s", exc)

    def publish_inventory(self) -> None:
        key = INVENTORY_KEY.format(host=self.config.host)
        self.redis.set(key, self.inventory().model_dump_json())

    def _broker_clock(self) -> float:
        """The broker's time without asking it (the skew measured at start): progress is
        written between timed requests, where a round trip more is not wanted."""
        return time.time() + (self.clock_skew_s or 0.0)

    def _broker_now(self) -> float:
        """The broker's clock: `last_seen` is compared on other boxes, against the same clock."""
        seconds, micros = self.redis.time()
        return float(seconds) + micros / 1e6

    def _beat(self) -> None:
        while not self._stop.wait(self.lease.heartbeat_s):
            try:
                if not self.lease.keep(self.redis):
                    self._lost_lease()
                    return
                self._sweep_outbox()
                if self.unattended is not None:
                    self.unattended.tick()
                if not self._stop.is_set():
                    self.publish_inventory()
                    self.progress.refresh()
            except redis_lib.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    def _sweep_outbox(self) -> None:
        """Results kept on the box: forget the recorded ones, publish the ones the broker lost
        (worker/outbox.py). A failure waits for the next beat: the lease and the inventory
        must still be kept."""
        try:
            self.outbox.sweep(self.redis)
        except (OSError, redis_lib.RedisError) as exc:
            log.error("could not go through the results kept in %s: %s", self.outbox.folder, exc)

    def _lost_lease(self) -> None:
        """Stop consuming (Celery's warm shutdown); the job under way cannot publish."""
        if self._lease_lost.is_set():
            return
        self._lease_lost.set()
        log.error("another agent took over host %s: stopping; the job under way (if any) "
                  "goes back to its queue", self.config.host)  # fmt: skip
        os.kill(os.getpid(), signal.SIGTERM)

    # -- celery ------------------------------------------------------------------------------

    def _make_app(self) -> Celery:
        app = Celery("orch-worker", broker=self.broker_url, set_as_current=False)
        app.conf.update(celery_settings())
        use_checked_transport(app, self.broker_url, self._dead_letter)
        config, redis, spool, agent = self.config, self.redis, self.spool, self

        @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
        def run_job(payload: dict[str, Any]) -> dict[str, Any] | None:
            with agent.job_lock:  # the heartbeat decides to switch under the same lock
                rebooting = agent.unattended is not None and agent.unattended.rebooting_into
                agent.busy = not rebooting
            if rebooting:
                # The box is about to reboot into another configuration: hold the job (it
                # goes back to its queue) instead of measuring it across a shutdown.
                agent._stop.wait(30)
                raise Reject("the box is rebooting", requeue=True)
            try:
                result = execute(payload, config, redis, spool, agent.facts, agent.lease,
                                 outbox=agent.outbox.folder, progress=agent.progress)  # fmt: skip
            except LeaseLost as exc:
                # Not acknowledged: the message goes back to its queue, for the agent that
                # holds the box now (it waits for this process to exit before it runs any).
                log.error("%s", exc)
                agent._lost_lease()
                raise Reject(str(exc), requeue=True) from exc
            except redis_lib.RedisError as exc:
                # Celery acknowledges a failed task; a broker hiccup must not drop the job.
                log.error("broker error before the job ran, re-queueing it: %s", exc)
                raise Reject(str(exc), requeue=True) from exc
            finally:
                agent.busy = False
                agent.progress.idle()
            return None if result is None else {"job_id": result.job_id, "status": result.status}

        return app


def _model_shapes(models: dict[str, Path]) -> dict[str, ModelShape]:
    """GGUF header shapes of the box's model files, for the coordinator's memory planner."""
    shapes = {}
    for name, path in models.items():
        try:
            shapes[name] = read_model_shape(path)
        except Exception as exc:  # any unreadable file: the agent still runs its other models
            log.warning("model %s (%s): no GGUF shape for the planner: %s", name, path, exc)
    return shapes


def _holders(holders: list[Holder]) -> str:
    return ", ".join(f"pid {h.pid} (lease generation {h.generation})" for h in holders)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
