"""Names and settings that both sides of the queue must agree on.

Celery itself is not imported here: these are plain values that the coordinator's producer app
and the worker's consumer app both apply, so the two can never drift apart.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

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
ATTEMPTS_KEY = "orch:attempts:{job_id}"  # counter: deliveries of a job that started running
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


def redact_url(url: str) -> str:
    """`redis://:secret@host` -> `redis://:***@host`: URLs are printed, passwords never."""
    scheme, sep, rest = url.partition("://")
    creds, at, hostpart = rest.rpartition("@")
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{hostpart}" if at else url


def job_of_message(message: dict[str, Any]) -> dict[str, Any] | None:
    """The job (a JobSpec as JSON) inside one Celery message as kombu's Redis transport keeps
    it (protocol 2: `body` is base64 of `[args, kwargs, embed]`, args[0] our job); None for a
    message that is not an orch job or cannot be read."""
    try:
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        job = args[0]
    except (KeyError, IndexError, TypeError, ValueError, binascii.Error):
        return None
    return job if isinstance(job, dict) else None


def celery_settings() -> dict[str, Any]:
    """Celery configuration shared by the producer (coordinator) and the consumer (worker)."""
    transport = {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        # Hour-long jobs leave the connection idle; dead sockets must be noticed.
        "health_check_interval": 30,
        "socket_keepalive": True,
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
    }
