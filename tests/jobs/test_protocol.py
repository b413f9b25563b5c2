"""The message rule both sides apply (jobs.protocol.check_message) and the dead-letter entry,
on messages the real Publisher wrote to a real Valkey."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis

from jobs.deadletter import (
    DEAD_LETTER_KEY,
    DEAD_LETTER_MAXLEN,
    DEAD_LETTER_RAW_CHARS,
    DeadLetter,
    move_from_list,
    push_dead_letter,
)
from jobs.protocol import (
    MAX_BULK_BYTES,
    MAX_JOB_JSON_BYTES,
    InvalidMessage,
    NewerMessage,
    check_message,
    unacked_parts,
)
from jobs.spec import JobSpec, Workload
from jobs.version import SCHEMA_VERSION
from orchestrator.broker import Publisher, orch_messages
from orchestrator.dlq import dead_letter_count
from orchestrator.errors import BrokerError
from tests.poison import job, poison_messages


def _published(broker: str, redis_client: Any, *jobs: Any) -> list[bytes]:
    publisher = Publisher(broker)
    try:
        for one in jobs:
            publisher.publish(one)
    finally:
        publisher.close()
    return [redis_client.lrange(one.queue, 0, 0)[0] for one in jobs]


@pytest.fixture
def messages(broker: str, redis_client: Any) -> tuple[bytes, dict[str, tuple[bytes, str]]]:
    good, misrouted = _published(broker, redis_client, job("box"), job("other"))
    return good, poison_messages(good, misrouted)


def test_a_published_job_passes_and_comes_back_equal(messages: Any) -> None:
    good, _poison = messages
    assert check_message(good, "orch.box.default") == job("box")


@pytest.mark.parametrize(
    "kind",
    ["not-json", "binary", "json-list", "no-properties", "no-body", "wrong-content-type",
     "bad-base64", "not-a-jobspec", "unknown-task", "eta", "header-type", "no-routing", "chain",
     "misrouted", "huge", "utf-16"],
)  # fmt: skip
def test_every_poison_kind_is_refused_with_its_reason(messages: Any, kind: str) -> None:
    _good, poison = messages
    raw, reason = poison[kind]
    with pytest.raises(InvalidMessage, match=reason):
        check_message(raw, "orch.box.default")


def test_a_good_message_in_the_wrong_queue_is_misrouted(messages: Any) -> None:
    good, _poison = messages
    with pytest.raises(InvalidMessage, match="for orch.box.default was found in orch.x.default"):
        check_message(good, "orch.x.default")


def test_unacked_entries_are_parsed_or_refused() -> None:
    envelope = {"body": "x"}
    assert unacked_parts(json.dumps([envelope, "", "orch.box.default"])) == (
        envelope,
        "orch.box.default",
    )
    for junk in (b"junk", b"{}", b"[1, 2]", b'[{}, "", 3]'):
        with pytest.raises(InvalidMessage):
            unacked_parts(junk)


def test_dead_letters_are_bounded_in_size_and_number(redis_client: Any) -> None:
    huge = b"\xff" + b"y" * (5 * DEAD_LETTER_RAW_CHARS)
    for _ in range(DEAD_LETTER_MAXLEN + 5):
        push_dead_letter(redis_client, huge, "orch.box.default", "oversized", "worker box")
    assert redis_client.llen(DEAD_LETTER_KEY) == DEAD_LETTER_MAXLEN
    entry = DeadLetter.model_validate_json(redis_client.lindex(DEAD_LETTER_KEY, 0))
    assert entry.size_bytes == len(huge) and entry.truncated
    assert len(entry.raw) == DEAD_LETTER_RAW_CHARS and entry.raw.startswith("\ufffdy")
    assert (entry.queue, entry.reason, entry.source) == ("orch.box.default", "oversized",
                                                          "worker box")  # fmt: skip


def test_moving_from_a_list_happens_once(redis_client: Any) -> None:
    redis_client.rpush("orch.box.default", b"junk", b"junk")
    assert move_from_list(redis_client, "orch.box.default", b"junk", "not JSON", "coordinator")
    assert redis_client.lrange("orch.box.default", 0, -1) == [b"junk"]
    assert move_from_list(redis_client, "orch.box.default", b"junk", "not JSON", "coordinator")
    assert not move_from_list(redis_client, "orch.box.default", b"junk", "not JSON", "x")
    assert redis_client.llen(DEAD_LETTER_KEY) == 2


def test_the_publishers_limit_and_the_consumers_agree(broker: str, redis_client: Any) -> None:
    def sized(chars: int) -> JobSpec:
        # Non-ASCII: kombu's JSON escapes each character as \uXXXX, six bytes
        prompt = Workload(prompt_text="编" * chars, gen_tokens=8)
        return JobSpec.model_validate({**job("box").model_dump(), "workload": prompt, "job_id": ""})

    def json_size(spec: JobSpec) -> int:
        return len(json.dumps(spec.model_dump(mode="json")))

    chars = 1 + (MAX_JOB_JSON_BYTES - json_size(sized(1))) // 6
    largest = sized(chars)
    assert json_size(largest) <= MAX_JOB_JSON_BYTES < json_size(sized(chars + 1))
    [raw] = _published(broker, redis_client, largest)
    assert check_message(raw, largest.queue) == largest  # the agent would run it
    publisher = Publisher(broker)
    try:
        with pytest.raises(BrokerError, match="over the .*-byte limit of a queued job"):
            publisher.publish(sized(chars + 1))
    finally:
        publisher.close()


def _from_a_newer_orch(good: bytes) -> bytes:
    """`good` as a newer orch would write it: a higher schema and a field this orch lacks."""
    envelope = json.loads(good)
    body = json.loads(base64.b64decode(envelope["body"]))
    body[0][0] |= {"schema_version": SCHEMA_VERSION + 1, "a_later_field": 1}
    envelope["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(envelope).encode()


def test_a_newer_orchs_job_is_named_so_and_left_in_place_by_coordinators(
    messages: Any, redis_client: Any
) -> None:
    """An older `orch status` lists the queues: it must not dead-letter a newer submitter's
    valid jobs as junk (it leaves them; only an agent that popped one dead-letters it)."""
    good, _poison = messages
    newer = _from_a_newer_orch(good)
    with pytest.raises(NewerMessage, match=f"schema {SCHEMA_VERSION + 1} from a newer orch"):
        check_message(newer, "orch.box.default")

    redis_client.rpush("orch.box.default", newer, b"not json")
    listed = [one for queue, _delivered, one in orch_messages(redis_client) if "box" in queue]
    assert listed == [job("box")]  # the good one; neither the newer nor the junk
    assert redis_client.lrange("orch.box.default", 0, -1) == [good, newer]
    assert dead_letter_count(redis_client) == 1  # the junk only


def test_brokers_orch_starts_refuse_a_value_over_the_bulk_cap(redis_client: Any) -> None:
    """Junk in a queue costs an agent that pops it at most MAX_BULK_BYTES of memory: the
    broker refuses anything larger (Valkey's default would be 512 MB)."""
    assert int(redis_client.config_get("proto-max-bulk-len")["proto-max-bulk-len"]) == (
        MAX_BULK_BYTES
    )
    redis_client.rpush("orch.box.default", b"x" * 1024)
    # Valkey answers a protocol error and closes the connection as the value starts to arrive.
    with pytest.raises((redis.ResponseError, redis.ConnectionError)):
        redis_client.rpush("orch.box.default", b"x" * (MAX_BULK_BYTES + 1))
    assert redis_client.llen("orch.box.default") == 1
