"""jobs.acks against a real Valkey: the broker epoch, and which stream entries are still ours."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.acks import ACKED_KEY, ack_id, acknowledge, broker_epoch, in_stream, xadd_result
from jobs.protocol import RESULTS_KEY

pytestmark = pytest.mark.integration


def test_the_epoch_holds_while_the_data_does_and_changes_when_it_is_wiped(
    redis_client: Any,
) -> None:
    first = broker_epoch(redis_client)
    redis_client.set("anything", "1")
    assert broker_epoch(redis_client) == first
    redis_client.flushall()
    assert broker_epoch(redis_client) != first


def test_in_stream_needs_the_entry_and_its_ack_field_to_match(redis_client: Any) -> None:
    ours = xadd_result(redis_client, "ours").decode()
    bare = redis_client.xadd(RESULTS_KEY, {"result": "no ack field"}).decode()
    assert in_stream(redis_client, [(ours, ack_id("ours"))]) == {ours}
    wrong = [(ours, ack_id("another body")), (bare, ack_id("no ack field")), ("1-1", ack_id("x"))]
    assert in_stream(redis_client, wrong) == set()


def test_ack_id_agrees_with_the_broker_own_sha1_of_the_bytes(redis_client: Any) -> None:
    body = '{"note": "caf\u00e9"}'  # not ASCII: the UTF-8 bytes are what counts
    assert redis_client.eval("return redis.sha1hex(ARGV[1])", 0, body).decode() == ack_id(body)


def test_acknowledgements_are_scored_by_the_brokers_clock(redis_client: Any) -> None:
    """Every store's acknowledgements are trimmed in one order: the broker's clock, not each
    store's own (one that lags would see its acknowledgements trimmed first)."""

    def broker_now() -> float:
        seconds, micros = redis_client.time()
        return float(seconds) + float(micros) / 1e6

    before = broker_now()
    assert acknowledge(redis_client, [b'{"a": 1}']) == 1
    after = broker_now()
    score = redis_client.zscore(ACKED_KEY, ack_id(b'{"a": 1}'))
    assert before <= score <= after
