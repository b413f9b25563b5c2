"""The coordinator's side of the queue: connect, read inventories, publish jobs."""

from __future__ import annotations

from typing import Any

import redis as redis_lib
from celery import Celery
from kombu.entity import Exchange, Queue

from jobs.inventory import WorkerInventory
from jobs.protocol import INVENTORY_PATTERN, TASK_NAME, celery_settings
from jobs.spec import JobSpec
from orchestrator.errors import BrokerError


def redact(url: str) -> str:
    """`redis://:secret@host` -> `redis://:***@host`: URLs are printed, passwords never."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, hostpart = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{hostpart}"


def connect(url: str) -> Any:
    """A redis client for `url`, checked with PING; BrokerError with the redacted URL if not."""
    try:
        client = redis_lib.Redis.from_url(url, socket_connect_timeout=5, socket_keepalive=True)
        client.ping()
    except (redis_lib.RedisError, ValueError) as exc:
        raise BrokerError(f"cannot reach the broker at {redact(url)}: {exc}") from exc
    return client


def read_inventories(client: Any) -> dict[str, WorkerInventory]:
    """Every host that ever started a worker on this broker, by name."""
    out: dict[str, WorkerInventory] = {}
    for key in client.scan_iter(match=INVENTORY_PATTERN, count=200):
        raw = client.get(key)
        if raw:
            inv = WorkerInventory.model_validate_json(raw)
            out[inv.host] = inv
    return out


def queue_length(client: Any, queue: str) -> int:
    """Jobs waiting (not yet delivered) in a queue: kombu's Redis transport keeps one list each."""
    return int(client.llen(queue))


class Publisher:
    """Publishes JobSpecs to their (host, configuration) queue through Celery."""

    def __init__(self, url: str) -> None:
        self.app = Celery("orch-coordinator", broker=url, set_as_current=False)
        self.app.conf.update(celery_settings())
        self._declared: set[str] = set()

    def publish(self, jobs: list[JobSpec]) -> None:
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            for job in jobs:
                if job.queue not in self._declared:
                    # Without the binding the Redis transport drops the message silently.
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
