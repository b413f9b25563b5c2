"""The coordinator's side of the queue: connect, read inventories, publish jobs."""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis as redis_lib
from pydantic import ValidationError

from jobs.brokerurl import CONNECT_TIMEOUT_S, canonical_url, connection_problem, remember_secrets
from jobs.deadletter import UNACKED_KEY, move_from_list, move_from_unacked
from jobs.inventory import WorkerInventory
from jobs.protocol import (
    INVENTORY_PATTERN,
    InvalidMessage,
    NewerMessage,
    celery_settings,
    check_envelope,
    check_message,
    queue_of_key,
    redact_url,
    unacked_parts,
)
from jobs.spec import JobSpec
from orchestrator.errors import BrokerError
from orchestrator.jobmessage import JobMessages
from orchestrator.outage import OutageRetry, outage_limit_s


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
        except NewerMessage as exc:
            log.warning("left a job in %s alone: %s", queue, exc)
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
        except NewerMessage as exc:
            log.warning("left a delivered job alone: %s", exc)
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


# Batches of one publish: a round trip per batch, not per job; a batch is capped in bytes too
# (a job with a long prompt_text can be ~1 MB) so that one call stays a few MB.
PUBLISH_BATCH_JOBS = 1000
PUBLISH_BATCH_BYTES = 8 * 1024 * 1024
# One batch's marker (see _PUSH_ONCE), kept long enough for any retry of that batch.
PUBLISHED_KEY = "orch:published:{token}"
PUBLISHED_TTL_S = 24 * 3600
# Pushes a batch of messages once: KEYS[1] is the batch's marker, KEYS[i] the queue of message
# ARGV[i] (i >= 2), ARGV[1] the marker's TTL. A Lua script runs whole or not at all, and a
# retry of a batch whose reply was lost in an outage finds its marker and pushes nothing, so
# riding out an outage never queues a job twice. LPUSH, as kombu does: consumers pop from the
# right, so each queue stays in publishing order.
_PUSH_ONCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 2, #KEYS do redis.call('LPUSH', KEYS[i], ARGV[i]) end
return #KEYS - 1
"""


class Publisher:
    """Publishes JobSpecs to their (host, configuration) queue: the messages Celery's
    `send_task` would write (orchestrator/jobmessage.py), pushed in batches over one
    connection, each batch in one round trip.

    Example::

        publisher = Publisher(broker_url)
        try:
            publisher.publish_many(jobs, on_published=store.record_jobs)
        finally:
            publisher.close()
    """

    def __init__(self, url: str, *, outage_s: float | None = None) -> None:
        self.url = canonical_url(url)
        remember_secrets(self.url)
        self._outage_s = outage_s
        self._client: Any = None
        self._push_once: Any = None
        self._kombu: Any = None  # a kombu connection, for declaring queues
        self._declared: set[str] = set()
        self._messages = JobMessages()

    def publish(self, job: JobSpec) -> None:
        """Publish one job (callers record it in the store right after)."""
        self.publish_many([job])

    def publish_many(
        self,
        jobs: Iterable[JobSpec],
        on_published: Callable[[list[JobSpec]], None] = lambda _batch: None,
    ) -> int:
        """Publish `jobs` in order, a batch at a time, and call `on_published` with each batch
        once it is queued (in this thread, while the next batch goes out), so that a failure
        half-way leaves the caller knowing what was queued. Returns how many.

        A batch is queued whole or not at all; the broker riding out an outage (see
        `connect`) never queues one twice. BrokerError, before its batch is sent, for a job
        every agent would dead-letter as oversized."""
        # One batch goes out (in a thread: the broker's work and the round trip overlap with
        # building the next batch, and recording this one) while the next is built; never two
        # at once, which could interleave them in a queue.
        published = 0
        pending: tuple[Future[None], list[JobSpec]] | None = None  # sent, not yet reported
        recording = False
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="orch-publish") as sender:
            try:
                for batch, raw in self._batches(jobs):
                    if pending is not None:
                        pending[0].result()
                    landed, pending = pending, (sender.submit(self._push, batch, raw), batch)
                    if landed is not None:
                        recording = True
                        on_published(landed[1])
                        recording = False
                        published += len(landed[1])
                if pending is not None:
                    pending[0].result()
                    landed, pending = pending, None
                    recording = True
                    on_published(landed[1])
                    published += len(landed[1])
            except BaseException:
                # A job that cannot be sent, or a failed batch: the one on its way still
                # lands, and is reported, unless reporting is what failed.
                if pending is not None and pending[0].exception() is None and not recording:
                    on_published(pending[1])
                raise
        return published

    def _batches(self, jobs: Iterable[JobSpec]) -> Iterator[tuple[list[JobSpec], list[str]]]:
        """(jobs, their messages), PUBLISH_BATCH_JOBS or PUBLISH_BATCH_BYTES at a time."""
        batch: list[JobSpec] = []
        raw: list[str] = []
        size = 0
        for job in jobs:
            message = self._messages.build(job)
            batch.append(job)
            raw.append(message)
            size += len(message)
            if len(batch) >= PUBLISH_BATCH_JOBS or size >= PUBLISH_BATCH_BYTES:
                yield batch, raw
                batch, raw, size = [], [], 0
        if batch:
            yield batch, raw

    def _push(self, batch: list[JobSpec], raw: list[str]) -> None:
        if self._client is None:
            self._client = connect(self.url, outage_s=self._outage_s)
            self._push_once = self._client.register_script(_PUSH_ONCE)
        for queue in dict.fromkeys(job.queue for job in batch):
            if queue not in self._declared:
                self._declare(queue)
        marker = PUBLISHED_KEY.format(token=uuid.uuid4().hex)
        self._push_once(keys=[marker, *(job.queue for job in batch)], args=[PUBLISHED_TTL_S, *raw])

    def _declare(self, queue: str) -> None:
        """Bind `queue` as Celery's producer does before its first message to it (kombu's
        `_kombu.binding.*` sets), once per queue and publisher."""
        # Imported here: kombu (and what it loads) costs only the commands that publish.
        from kombu.connection import Connection
        from kombu.entity import Exchange, Queue

        if self._kombu is None:
            self._kombu = Connection(
                self.url, transport_options=celery_settings()["broker_transport_options"]
            )
        Queue(queue, Exchange(queue), routing_key=queue)(self._kombu.default_channel).declare()
        self._declared.add(queue)

    def close(self) -> None:
        if self._kombu is not None:
            self._kombu.release()
        if self._client is not None:
            self._client.close()
