"""The coordinator's side of the queue: connect, read inventories, publish jobs."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis as redis_lib
from celery import Celery
from kombu.entity import Exchange, Queue
from pydantic import ValidationError

from jobs.brokerurl import CONNECT_TIMEOUT_S, canonical_url, connection_problem, remember_secrets
from jobs.deadletter import UNACKED_KEY, move_from_list, move_from_unacked
from jobs.inventory import WorkerInventory
from jobs.protocol import (
    INVENTORY_PATTERN,
    MAX_JOB_JSON_BYTES,
    TASK_NAME,
    InvalidMessage,
    celery_settings,
    check_envelope,
    check_message,
    queue_of_key,
    redact_url,
    unacked_parts,
)
from jobs.spec import JobSpec
from orchestrator.errors import BrokerError
from orchestrator.outage import PUBLISH_RETRY_STEP_S, OutageRetry, outage_limit_s


def connect(url: str, *, outage_s: float | None = None) -> Any:
    """A redis client for `url`, checked with PING; BrokerError with the redacted URL if not.

    Every command of the client (this PING included) rides out a broker that stops answering
    for up to `outage_s` (default `outage_limit_s()`: a restart), saying so on stderr; a URL
    that will never work (wrong password, TLS to a plain port) fails at once."""
    url = canonical_url(url)
    remember_secrets(url)
    limit = outage_limit_s() if outage_s is None else outage_s
    try:
        client = redis_lib.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            # Also bounds the TLS handshake (redis-py sets it before the handshake): a reply
            # that does not come from a dead connection, or a plain port, is a reconnect.
            socket_timeout=2 * CONNECT_TIMEOUT_S,
            socket_keepalive=True,
            retry=OutageRetry(url, limit),
            retry_on_error=[redis_lib.ConnectionError, redis_lib.TimeoutError],
        )
        client.ping()
    except (redis_lib.RedisError, ValueError) as exc:
        why = connection_problem(url, exc) or str(exc)
        raise BrokerError(f"cannot reach the broker at {redact_url(url)}: {why}") from exc
    return client


@dataclass
class Fleet:
    """What the workers registered: readable inventories, and why others could not be read."""

    inventories: dict[str, WorkerInventory] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # host -> reason


def read_fleet(client: Any) -> Fleet:
    fleet = Fleet()
    for key in client.scan_iter(match=INVENTORY_PATTERN, count=200):
        raw = client.get(key)
        if not raw:
            continue
        host = key.decode().removeprefix("orch:inventory:")
        try:
            inv = WorkerInventory.model_validate_json(raw)
        except ValidationError:
            try:
                version = json.loads(raw).get("version", "?")
            except (ValueError, AttributeError, RecursionError):
                version = "?"
            fleet.unreadable[host] = f"its worker runs orch {version}, unreadable by this one"
            continue
        fleet.inventories[inv.host] = inv
    return fleet


def read_inventories(client: Any) -> dict[str, WorkerInventory]:
    """Every host that ever started a worker on this broker (and can be read), by name."""
    return read_fleet(client).inventories


def broker_time(client: Any) -> float:
    """The broker's clock, which workers also use for `last_seen`."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


_SOURCE = "coordinator"
log = logging.getLogger("orch.coordinator")


def queued_jobs(client: Any, key: str | bytes) -> Iterator[tuple[bytes, JobSpec]]:
    """(raw message, job) of each valid message waiting in queue list `key`.

    A message `jobs.protocol.check_message` refuses is moved to the dead-letter list, as the
    agent would do when it popped it: no coordinator command stops on junk in a queue.
    """
    queue = queue_of_key(key)
    for raw in client.lrange(key, 0, -1):
        try:
            yield raw, check_message(raw, queue)
        except InvalidMessage as exc:
            if move_from_list(client, key, raw, str(exc), _SOURCE):
                log.warning("dead-lettered a message in %s: %s", queue, exc)


def orch_messages(client: Any) -> Iterator[tuple[str, bool, JobSpec]]:
    """Every orch job message on this broker as (queue, delivered, job); invalid ones are
    dead-lettered on the way (see `queued_jobs`).

    Kombu's Redis transport keeps one list per queue (waiting messages) and the delivered but
    unacknowledged ones in the `unacked` hash, with their routing key (our queue name).
    """
    for key in client.scan_iter(match="orch.*", count=200, _type="list"):
        for _raw, job in queued_jobs(client, key):
            yield job.queue, False, job
    for tag, raw in client.hgetall(UNACKED_KEY).items():
        try:
            envelope, routing_key = unacked_parts(raw)
            if not routing_key.startswith("orch."):
                continue  # another app's message on a shared Redis
            yield routing_key, True, check_envelope(envelope, routing_key)
        except InvalidMessage as exc:
            if move_from_unacked(client, tag, raw, str(exc), _SOURCE):
                log.warning("dead-lettered an entry of kombu's unacked hash: %s", exc)


def waiting_job_ids(client: Any) -> set[str]:
    """Ids of jobs queued or delivered-but-unacknowledged anywhere on this broker."""
    return {job.job_id for _queue, _delivered, job in orch_messages(client)}


def queue_counts(client: Any) -> tuple[Counter[str], Counter[str]]:
    """(waiting, running) jobs per orch queue; running = delivered but not acknowledged (a job
    a worker runs now, or an orphan its dead worker left)."""
    waiting: Counter[str] = Counter()
    running: Counter[str] = Counter()
    for queue, delivered, _message in orch_messages(client):
        (running if delivered else waiting)[queue] += 1
    return waiting, running


class Publisher:
    """Publishes JobSpecs to their (host, configuration) queue through Celery."""

    def __init__(self, url: str, *, outage_s: float | None = None) -> None:
        url = canonical_url(url)
        remember_secrets(url)
        self.app = Celery("orch-coordinator", broker=url, set_as_current=False)
        self.app.conf.update(celery_settings())
        # Kombu retries a publish on its own; let it ride out the same outage as `connect`.
        limit = outage_limit_s() if outage_s is None else outage_s
        self.app.conf.task_publish_retry_policy = {
            "max_retries": max(1, math.ceil(limit / PUBLISH_RETRY_STEP_S)),
            "interval_start": 0.2,
            "interval_step": 1.0,
            "interval_max": PUBLISH_RETRY_STEP_S,
        }
        self._declared: set[str] = set()

    def publish(self, job: JobSpec) -> None:
        """Publish one job (callers record each in the store right after, see submit)."""
        size = len(json.dumps(job.model_dump(mode="json")))  # ASCII-escaped, as kombu sends it
        if size > MAX_JOB_JSON_BYTES:  # every agent would dead-letter it as oversized
            raise BrokerError(
                f"job {job.job_id} ({job.campaign}, {job.model}) is {size} bytes as JSON, over "
                f"the {MAX_JOB_JSON_BYTES}-byte limit of a queued job: shorten its prompt_text"
            )
        with self.app.connection_for_write() as conn:
            if job.queue not in self._declared:
                # Without the binding the Redis transport drops the message silently.
                channel = conn.default_channel
                Queue(job.queue, Exchange(job.queue), routing_key=job.queue)(channel).declare()
                self._declared.add(job.queue)
            self.app.send_task(
                TASK_NAME,
                args=[job.model_dump(mode="json")],
                queue=job.queue,
                routing_key=job.queue,
                task_id=job.job_id,
                connection=conn,
            )

    def close(self) -> None:
        self.app.close()
