"""The queued message of a job, as Celery's `send_task` writes it, built without Celery.

`orch submit` queues tens of thousands of jobs; going through `Celery.send_task` costs about a
millisecond a job (routing, signals, `saferepr` of the arguments, a Redis client per publish)
where the message itself is a few string operations. `JobMessages` writes the same kombu
envelope (Celery task protocol 2, JSON in base64, the same headers and properties in the same
order) that the worker's Celery consumes and `jobs.protocol.check_message` accepts;
tests/orchestrator/test_publish.py compares it with what `send_task` writes.

Example::

    messages = JobMessages()
    raw = messages.build(job)   # str, LPUSHed to job.queue; BrokerError when oversized
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any

from jobs.protocol import MAX_JOB_JSON_BYTES, TASK_NAME
from jobs.spec import JobSpec
from orchestrator.errors import BrokerError

# celery.app.amqp.AMQP.argsrepr_maxsize and Celery's default `task_repr_maxlevels`.
ARGSREPR_MAXSIZE = 1024
REPR_MAXLEVELS = 3
# Celery's protocol-2 body is (args, kwargs, embed); a job has one argument and no workflow.
_BODY_TAIL = '], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


class JobMessages:
    """Builds the messages of one producer: the fields Celery fills per producer (`origin`,
    `reply_to`) are fixed once, as Celery fixes them per process and app."""

    def __init__(self) -> None:
        # celery.utils.nodenames.anon_nodename(): "gen<pid>@<host>".
        origin = f"gen{os.getpid()}@{socket.gethostname()}"
        # Celery sends its app's `thread_oid` here, an address for replies orch never asks
        # for (no result backend): any fixed id of this producer means the same.
        reply_to = str(uuid.uuid4())
        # The envelope as json.dumps writes it, cut where a job's own values go: filling in
        # the pieces is the same text as dumping the whole dict, at a tenth of the cost.
        pieces = _FIELD.split(json.dumps(envelope(_FIELDS, origin, reply_to)))
        self._constants = pieces[0::2]
        self._fields = pieces[1::2]
        self._random: Iterator[bytes] = iter(())

    def build(self, job: JobSpec) -> str:
        """The raw message (kombu's JSON envelope) for `job`; BrokerError for a job every
        agent would dead-letter as oversized."""
        data = job.model_dump(mode="json")
        # As kombu's JSON serializer writes it (ASCII-escaped, `, ` and `: `).
        text = json.dumps(data)
        if len(text) > MAX_JOB_JSON_BYTES:
            raise BrokerError(
                f"job {job.job_id} ({job.campaign}, {job.model}) is {len(text)} bytes as JSON, "
                f"over the {MAX_JOB_JSON_BYTES}-byte limit of a queued job: shorten its "
                "prompt_text"
            )
        # JSON string literals; json.dumps only where a character may need escaping (a job id
        # is hex, base64 and uuids need none).
        values = {
            "id": f'"{job.job_id}"' if _HEX.fullmatch(job.job_id) else json.dumps(job.job_id),
            "body": '"' + base64.b64encode(("[[" + text + _BODY_TAIL).encode()).decode() + '"',
            "argsrepr": json.dumps(argsrepr(data, text)),
            "queue": json.dumps(job.queue),
            "tag": f'"{self._uuid4()}"',
        }
        out = [self._constants[0]]
        for name, constant in zip(self._fields, self._constants[1:], strict=True):
            out += (values[name], constant)
        return "".join(out)

    def _uuid4(self) -> str:
        """str(uuid.uuid4()), from random bytes read a thousand at a time (a getrandom call
        per message costs more than the rest of its envelope)."""
        chunk = next(self._random, None)
        if chunk is None:
            pool = os.urandom(16 * 1024)
            self._random = (pool[i : i + 16] for i in range(0, len(pool), 16))
            chunk = next(self._random)
        return str(uuid.UUID(bytes=chunk, version=4))


# Stand-ins for the values of one job in `envelope` (JSON strings, quotes included).
_FIELDS = {name: f"@orch-field-{name}@" for name in ("id", "body", "argsrepr", "queue", "tag")}
_FIELD = re.compile(r'"@orch-field-(\w+)@"')
_HEX = re.compile("[0-9a-f]+")


def envelope(values: dict[str, str], origin: str, reply_to: str) -> dict[str, Any]:
    """The message of a job as a dict: what `celery.app.amqp.AMQP.as_task_v2` makes of
    `send_task(TASK_NAME, args=[job], task_id=job.job_id, queue=job.queue)` and kombu's
    `Producer.publish` and Redis `Channel.basic_publish` wrap around it, in their key order."""
    job_id = values["id"]
    headers: dict[str, Any] = {
        "lang": "py",
        "task": TASK_NAME,
        "id": job_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": job_id,  # a task sent from outside any task is its own root
        "parent_id": None,
        "argsrepr": values["argsrepr"],
        "kwargsrepr": "{}",
        "origin": origin,
        "ignore_result": None,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    return {
        "body": values["body"],
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": job_id,
            "reply_to": reply_to,
            "delivery_mode": 2,  # persistent, Celery's default
            # Celery sends to a direct queue through the anonymous exchange.
            "delivery_info": {"exchange": "", "routing_key": values["queue"]},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": values["tag"],  # kombu: a new uuid4 per message
        },
    }


def argsrepr(data: dict[str, Any], text: str) -> str:
    """Celery's `argsrepr` header (what its logs and monitors show): `saferepr([job])`, for
    the job's JSON-mode dump `data` whose JSON is `text`.

    `saferepr` takes ~0.5 ms a job; for a job whose strings are plain ASCII without quotes
    or backslashes (`text` would show an escape for anything else) and whose repr is short
    enough not to be cut, it is the same text as `repr`, which takes ~10 us."""
    args = [data]
    if "\\" not in text and "'" not in text and "\x7f" not in text:
        plain = repr(args)
        if len(plain) < ARGSREPR_MAXSIZE:
            return plain
    from celery.utils.saferepr import saferepr  # only for the rare job that needs it

    return str(saferepr(args, ARGSREPR_MAXSIZE, maxlevels=REPR_MAXLEVELS))
