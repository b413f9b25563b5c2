"""Names and settings that both sides of the queue must agree on.

Celery itself is not imported here: these are plain values that the coordinator's producer app
and the worker's consumer app both apply, so the two can never drift apart.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pydantic import ValidationError

from jobs.brokerurl import CONNECT_TIMEOUT_S
from jobs.brokerurl import redact_url as redact_url  # where callers have always found it
from jobs.spec import JobSpec
from jobs.version import SCHEMA_VERSION

TASK_NAME = "orch.run_job"

# Redis keys (all under one prefix so `orch` can share a Redis with other apps).
# Stream of RunResult JSON (field "result"). Workers append; every coordinator store reads it
# from its own cursor, so no store takes a result away from another, and results wait here
# while no coordinator runs. Trimmed (approximately) to the newest RESULTS_MAXLEN entries.
RESULTS_KEY = "orch:results"
RESULTS_MAXLEN = 100_000
BROKER_ID_KEY = "orch:broker-id"  # random id of this broker's data, keys the stores' cursors
INVENTORY_KEY = "orch:inventory:{host}"  # string: WorkerInventory JSON, refreshed by heartbeat
INVENTORY_PATTERN = "orch:inventory:*"
LEASE_KEY = "orch:lease:{host}"  # string: the one agent running benchmarks on a box right now
# Fencing (worker/lease.py): every acquisition of a box's lease takes the next generation from
# this counter, and every job start and result carries it.
LEASE_GENERATION_KEY = "orch:lease-generation:{host}"
# Hash: generation -> lease value (pid, process token) of each agent that took the lease and has
# not been seen to end, so a successor waits until they are known dead.
LEASE_HOLDERS_KEY = "orch:lease-holders:{host}"
ATTEMPTS_KEY = "orch:attempts:{job_id}"  # counter: deliveries of a job that started running
# Attempts a retry counts on from (jobs/finality.py reset_for_retry): MAX_DELIVERIES applies to
# the deliveries since.
ATTEMPTS_BASE_KEY = "orch:attempts-base:{job_id}"
# Attempt counters outlive the job by this long (they only guard against redelivery loops).
ATTEMPTS_TTL_S = 7 * 24 * 3600
FINAL_KEY = "orch:final:{job_id}"  # string: the final RunResult JSON, once pushed

# Longest a single job may run (the worker enforces it per engine run). Kombu's Redis transport
# re-delivers any message unacked for longer than `visibility_timeout`, so that must exceed this,
# or a long job runs twice (docs/facts.md, Celery and Redis).
MAX_JOB_TIMEOUT_S = 6 * 3600
VISIBILITY_TIMEOUT_S = MAX_JOB_TIMEOUT_S + 3600

# A job that kills its worker every time it runs would otherwise be re-delivered forever.
MAX_DELIVERIES = 3

HEARTBEAT_INTERVAL_S = 5.0
LEASE_TTL_S = 15
ONLINE_WITHIN_S = 3 * HEARTBEAT_INTERVAL_S
# A box that announced an unattended reboot is expected back within this (firmware updates,
# memory training after a carve-out change and a slow disk can take minutes).
REBOOT_GRACE_S = 20 * 60


# Poison-proof consumption: both sides check every queued message with `check_message` before
# anything acts on it; one that fails goes to the dead-letter list (jobs/deadletter.py).
# A real job message is about 2 KB; a long fixed `prompt_text` makes it bigger, never this big.
MAX_MESSAGE_BYTES = 1024 * 1024
# The most one value may take in a broker orch starts (Valkey's `proto-max-bulk-len`, default
# 512 MB): a client that pops a message reads it whole before anyone can check it, so junk in a
# queue costs an agent at most this much memory once. Above every message and result orch
# writes (jobs 1 MiB, results a few MiB: engine output, series and load records are bounded).
MAX_BULK_BYTES = 64 * 1024 * 1024
# The most a job's JSON may take so that its message stays under MAX_MESSAGE_BYTES (Celery
# sends it base64-encoded, 4/3 bigger, with about 3 KB of headers and a 1 KB argsrepr).
MAX_JOB_JSON_BYTES = MAX_MESSAGE_BYTES * 3 // 4 - 16 * 1024
# Kombu's Redis transport keeps a priority's messages in `<queue>\x06\x16<priority>`.
PRIORITY_SEP = "\x06\x16"
# Celery headers that make a worker do more than run the task once, now: a job never sets them.
_INERT_HEADERS = ("eta", "expires", "countdown", "chord", "group", "group_index", "callbacks",
                  "errbacks", "shadow", "stamped_headers", "stamps")  # fmt: skip
# The types of the other headers Celery reads (celery/app/amqp.py `as_task_v2` writes them,
# kombu adds `redelivered`); a header Celery does not know must be a plain value.
_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "lang": (str,), "task": (str,), "id": (str,), "retries": (int,), "root_id": (str, type(None)),
    "parent_id": (str, type(None)), "argsrepr": (str,), "kwargsrepr": (str,), "origin": (str,),
    "ignore_result": (bool, type(None)), "replaced_task_nesting": (int,), "redelivered": (bool,),
    "timelimit": (list, type(None)),
}  # fmt: skip
_PLAIN = (str, int, float, bool, type(None))
_INERT_EMBED = ("callbacks", "errbacks", "chain", "chord")


class InvalidMessage(ValueError):
    """A queued message that must not be acted on; the text says why (the dead-letter reason)."""


class NewerMessage(InvalidMessage):
    """A well-formed job from a newer orch (a higher schema version) that this orch cannot read.

    Not junk: a coordinator that only lists the queues leaves it where it is (an old `orch
    status` must not take a newer submitter's jobs); an agent that popped it dead-letters it with
    this reason, and the submitter's next `orch submit` queues it again.
    """


def queue_of_key(key: str | bytes) -> str:
    """The queue a kombu list key belongs to (priority suffix removed)."""
    name = key.decode(errors="replace") if isinstance(key, bytes) else key
    return name.split(PRIORITY_SEP, 1)[0]


def check_message(raw: bytes | str, queue: str) -> JobSpec:
    """The job in one raw message popped from `queue` (a kombu list), or InvalidMessage.

    The only messages that pass are what `Publisher.publish` writes: kombu's JSON envelope
    (protocol 2, base64 body, JSON content), task TASK_NAME, a JobSpec this orch can read whose
    id is the message's and whose queue is `queue`, and none of Celery's scheduling or workflow
    fields (eta, expires, callbacks, chains): anything else would make a worker crash, wait,
    run the wrong thing or send tasks of its own.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"oversized: {len(raw)} bytes (limit {MAX_MESSAGE_BYTES})")
    try:
        # Decoded as kombu decodes it (UTF-8): json.loads(bytes) would also accept UTF-16/32,
        # which kombu then fails on, after the message was popped.
        envelope = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidMessage(f"not JSON: {_short(exc)}") from None
    return check_envelope(envelope, queue)


def check_envelope(envelope: Any, queue: str) -> JobSpec:
    """`check_message` for an envelope already parsed (as kombu's `unacked` hash keeps it)."""
    headers = _checked_headers(envelope)
    argument = _job_argument(envelope.get("body"))
    version = argument.get("schema_version") if isinstance(argument, dict) else None
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise NewerMessage(
            f"a job of schema {version} from a newer orch; this orch reads schema "
            f"{SCHEMA_VERSION}: upgrade it"
        )
    try:
        job = JobSpec.model_validate(argument)
    except ValidationError as exc:
        raise InvalidMessage(
            f"not a job this orch (schema {SCHEMA_VERSION}) can read: {_short(exc)}"
        ) from None
    if headers.get("id") != job.job_id:
        raise InvalidMessage(f"message id {_short(headers.get('id'))} is not job {job.job_id}")
    if job.queue != queue:
        raise InvalidMessage(f"job {job.job_id} for {job.queue} was found in {queue}")
    return job


def _checked_headers(envelope: Any) -> dict[str, Any]:
    """The Celery headers of a kombu envelope that carries an orch job and nothing more."""
    if not isinstance(envelope, dict):
        raise InvalidMessage(f"not a kombu message: a JSON {type(envelope).__name__}")
    properties, headers = envelope.get("properties"), envelope.get("headers")
    if not isinstance(properties, dict) or not isinstance(headers, dict):
        raise InvalidMessage("not a kombu message: no properties or headers")
    info = properties.get("delivery_info")
    if not (
        isinstance(properties.get("delivery_tag"), str)
        and isinstance(info, dict)
        and isinstance(info.get("exchange"), str)
        and isinstance(info.get("routing_key"), str)
    ):
        raise InvalidMessage("not a kombu message: no delivery tag or delivery info")
    if not isinstance(properties.get("priority", 0), int):
        raise InvalidMessage("not a kombu message: priority is not a number")
    if envelope.get("content-type") != "application/json":
        raise InvalidMessage(f"content-type {_short(envelope.get('content-type'))}, not JSON")
    if envelope.get("content-encoding") != "utf-8" or properties.get("body_encoding") != "base64":
        raise InvalidMessage("body not utf-8 JSON in base64")
    if headers.get("task") != TASK_NAME:
        raise InvalidMessage(f"unknown task {_short(headers.get('task'))} (expected {TASK_NAME})")
    if any(headers.get(name) not in (None, [], {}) for name in _INERT_HEADERS) or headers.get(
        "timelimit"
    ) not in (None, [None, None]):
        raise InvalidMessage("sets Celery scheduling or workflow headers a job never has")
    for name, value in headers.items():
        if name not in _INERT_HEADERS and not isinstance(value, _HEADER_TYPES.get(name, _PLAIN)):
            raise InvalidMessage(f"header {_short(name)} has a {type(value).__name__} value")
    return headers


def _job_argument(body: Any) -> Any:
    """The one argument of Celery's protocol-2 body `[[job], {}, embed]`, base64-encoded."""
    if not isinstance(body, str):
        raise InvalidMessage("no body")
    try:
        decoded = json.loads(base64.b64decode(body, validate=True))
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise InvalidMessage(f"body is not base64 of JSON: {_short(exc)}") from None
    if not (
        isinstance(decoded, list)
        and len(decoded) == 3
        and isinstance(decoded[0], list)
        and len(decoded[0]) == 1
        and decoded[1] == {}
        and isinstance(decoded[2], dict)
    ):
        raise InvalidMessage("body is not Celery's [[job], {}, {...}]")
    if any(decoded[2].get(name) not in (None, [], {}) for name in _INERT_EMBED):
        raise InvalidMessage("body chains or calls back other tasks: a job never does")
    return decoded[0][0]


def unacked_parts(raw: bytes | str) -> tuple[Any, str]:
    """(envelope, routing key) of one entry of kombu's `unacked` hash, which holds
    `[message, exchange, routing_key]` as JSON; InvalidMessage for anything else."""
    if len(raw) > 2 * MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"oversized: {len(raw)} bytes")
    try:
        entry = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidMessage(f"unacked entry is not JSON: {_short(exc)}") from None
    if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], str)):
        raise InvalidMessage("unacked entry is not kombu's [message, exchange, routing_key]")
    return entry[0], entry[2]


def _short(value: object, limit: int = 200) -> str:
    text = str(value) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def celery_settings() -> dict[str, Any]:
    """Celery configuration shared by the producer (coordinator) and the consumer (worker)."""
    transport = {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        # Hour-long jobs leave the connection idle; dead sockets must be noticed.
        "health_check_interval": 30,
        "socket_keepalive": True,
        # TLS to a plain port, or a dead host, fails in seconds instead of hanging; kombu's
        # default read timeout is none at all, so a publish on a dead connection (or a TLS
        # handshake a plain port never answers) would wait forever. BRPOP polls for 1 s.
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": 30,
    }
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        "broker_connection_retry_on_startup": True,
        # The store is the system of record; Celery's result backend is not used.
        "task_ignore_result": True,
        "worker_hijack_root_logger": False,
        "task_default_queue": "orch.unrouted",
        "task_create_missing_queues": True,
        # orch never uses Celery's remote control (broadcast commands over pub/sub): left on,
        # anyone who can publish to the broker could stop every agent with one `shutdown`
        # (exit 0, which Restart=on-failure does not restart), and a junk broadcast crashes
        # kombu before any message check can run.
        "worker_enable_remote_control": False,
    }
