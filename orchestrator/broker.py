"""The coordinator's side of the queue: connect, read inventories, publish jobs."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis as redis_lib
from celery import Celery
from kombu.entity import Exchange, Queue
from pydantic import ValidationError

from jobs.inventory import WorkerInventory
from jobs.protocol import INVENTORY_PATTERN, TASK_NAME, celery_settings, redact_url
from jobs.spec import JobSpec
from orchestrator.errors import BrokerError


def connect(url: str) -> Any:
    """A redis client for `url`, checked with PING; BrokerError with the redacted URL if not."""
    try:
        client = redis_lib.Redis.from_url(url, socket_connect_timeout=5, socket_keepalive=True)
        client.ping()
    except (redis_lib.RedisError, ValueError) as exc:
        raise BrokerError(f"cannot reach the broker at {redact_url(url)}: {exc}") from exc
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
            version = json.loads(raw).get("version", "?") if raw.startswith(b"{") else "?"
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


def job_id_of(message: dict[str, Any]) -> str:
    """Celery puts the task id (our job id) in each message's headers."""
    return str(message.get("headers", {}).get("id"))


def orch_messages(client: Any) -> Iterator[tuple[str, bool, dict[str, Any]]]:
    """Every orch job message on this broker as (queue, delivered, message).

    Kombu's Redis transport keeps one list per queue (waiting messages) and the delivered but
    unacknowledged ones in the `unacked` hash, with their routing key (our queue name).
    """
    for key in client.scan_iter(match="orch.*", count=200, _type="list"):
        queue = key.decode() if isinstance(key, bytes) else str(key)
        for raw in client.lrange(key, 0, -1):
            yield queue, False, json.loads(raw)
    for raw in client.hvals("unacked"):
        message, _exchange, routing_key = json.loads(raw)
        if str(routing_key).startswith("orch."):
            yield str(routing_key), True, message


def waiting_job_ids(client: Any) -> set[str]:
    """Ids of jobs queued or delivered-but-unacknowledged anywhere on this broker."""
    return {job_id_of(message) for _queue, _delivered, message in orch_messages(client)}


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

    def __init__(self, url: str) -> None:
        self.app = Celery("orch-coordinator", broker=url, set_as_current=False)
        self.app.conf.update(celery_settings())
        self._declared: set[str] = set()

    def publish(self, job: JobSpec) -> None:
        """Publish one job (callers record each in the store right after, see submit)."""
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
