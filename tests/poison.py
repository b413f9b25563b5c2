"""Poison messages for the queue tests: every kind built from a real message that
`orchestrator.broker.Publisher` wrote, so each differs from a good one in one way only."""

from __future__ import annotations

import base64
import json
from typing import Any

from jobs.protocol import MAX_MESSAGE_BYTES
from jobs.spec import JobSpec
from orchestrator.broker import Publisher


def job(host: str, campaign: str = "poison", context: int = 64) -> JobSpec:
    return JobSpec(campaign=campaign, host=host, engine="llama-bench", model="tiny:q8_0",
                   backend="cpu", context=context, repetitions=1)  # fmt: skip


def _with_body(envelope: dict[str, Any], body: Any) -> bytes:
    raw = json.dumps(body).encode()
    return json.dumps({**envelope, "body": base64.b64encode(raw).decode()}).encode()


def poison_messages(good: bytes, misrouted: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (raw message, a fragment of the reason it must be refused with).

    `good` is a real message waiting in the queue under test; `misrouted` a real message for
    another host's queue."""
    envelope = json.loads(good)
    body = json.loads(base64.b64decode(envelope["body"]))
    no_body = {k: v for k, v in envelope.items() if k != "body"}
    no_properties = {k: v for k, v in envelope.items() if k != "properties"}
    unknown_task = {**envelope, "headers": {**envelope["headers"], "task": "celery.ping"}}
    eta = {**envelope, "headers": {**envelope["headers"], "eta": "2099-01-01T00:00:00"}}
    huge = {**envelope, "padding": "x" * (MAX_MESSAGE_BYTES + 1)}
    # Celery 5.7 iterates this header: an int stopped the consumer ("Unrecoverable error")
    bad_header = {**envelope, "headers": {**envelope["headers"], "retries": "x"}}
    no_routing = {**envelope, "properties": {**envelope["properties"], "delivery_info": {}}}
    return {
        "not-json": (b"not json", "not JSON"),
        "binary": (bytes(range(256)) * 4, "not JSON"),
        "json-list": (b"[1, 2, 3]", "not a kombu message"),
        "no-properties": (json.dumps(no_properties).encode(), "no properties"),
        "no-body": (json.dumps(no_body).encode(), "no body"),
        "wrong-content-type": (
            json.dumps({**envelope, "content-type": "application/x-python-serialize"}).encode(),
            "content-type",
        ),
        "bad-base64": (
            json.dumps({**envelope, "body": "%%% not base64 %%%"}).encode(),
            "not base64",
        ),  # fmt: skip
        "not-a-jobspec": (
            _with_body(envelope, [[{"campaign": "x", "evil": 1}], {}, body[2]]),
            "not a job this orch",
        ),  # fmt: skip
        "unknown-task": (json.dumps(unknown_task).encode(), "unknown task"),
        "eta": (json.dumps(eta).encode(), "scheduling or workflow"),
        "header-type": (json.dumps(bad_header).encode(), "header 'retries' has a str value"),
        "no-routing": (json.dumps(no_routing).encode(), "no delivery tag or delivery info"),
        "chain": (
            _with_body(envelope, [body[0], {}, {**body[2], "chain": [{"task": "x"}]}]),
            "chains or calls back",
        ),
        "misrouted": (misrouted, "was found in"),
        "huge": (json.dumps(huge).encode(), "oversized"),
        # json.loads(bytes) reads UTF-16 too; kombu decodes UTF-8 and crashed on it
        "utf-16": (good.decode("utf-8").encode("utf-16"), "not JSON"),
    }


def real_poison(broker: str, client: Any, host: str) -> dict[str, tuple[bytes, str]]:
    """`poison_messages` for `host`'s queue, built from real messages that are taken out
    again (call it before an agent of `host` consumes)."""
    good, other = job(host, campaign="template"), job("elsewhere", campaign="template")
    publisher = Publisher(broker)
    try:
        publisher.publish(good)
        publisher.publish(other)
    finally:
        publisher.close()
    poison = poison_messages(client.rpop(good.queue), client.rpop(other.queue))
    client.delete(other.queue)
    return poison
