"""worker.transport.requeue_unacked with real kombu against a real Valkey: a message given back
by a new agent gets a new delivery tag, so the old agent's late acknowledgement cannot remove
the in-flight record of its next delivery."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from kombu import Producer
from kombu.entity import Exchange, Queue

from jobs.protocol import celery_settings
from worker.transport import requeue_unacked

pytestmark = pytest.mark.integration

QUEUE = "orch.box.default"


@pytest.fixture
def channel(broker: str) -> Iterator[Any]:
    app = Celery("t", broker=broker, set_as_current=False)
    app.conf.update(celery_settings())
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        queue = Queue(QUEUE, Exchange(QUEUE), routing_key=QUEUE)(channel)
        queue.declare()
        channel.orch_queue = queue
        yield channel


def _deliver(channel: Any) -> Any:
    """Take the next message as a consumer does, leaving it unacknowledged."""
    message = channel.orch_queue.get(no_ack=False)
    assert message is not None
    return message


def test_a_requeued_message_gets_a_new_tag_and_a_late_ack_of_the_old_one_is_harmless(
    channel: Any,
) -> None:
    client = channel.client
    channel.orch_queue.maybe_bind(channel)
    producer = Producer(channel)  # kombu's producer, as Celery publishes
    producer.publish({"job": 1}, exchange=QUEUE, routing_key=QUEUE, serializer="json")
    first = _deliver(channel)  # the frozen agent took it
    old_tag = first.delivery_tag
    assert client.hexists(channel.unacked_key, old_tag)

    requeue_unacked(channel, client, old_tag)  # its successor gives it back
    assert client.hlen(channel.unacked_key) == 0 and client.zcard(channel.unacked_index_key) == 0
    [raw] = client.lrange(QUEUE, 0, -1)
    assert json.loads(raw)["properties"]["delivery_tag"] != old_tag

    second = _deliver(channel)  # the successor runs it
    assert second.payload == {"job": 1} and second.delivery_tag != old_tag
    assert second.delivery_info.get("redelivered") or second.headers.get("redelivered")
    first.ack()  # the frozen agent comes back and acknowledges its old delivery
    assert client.hexists(channel.unacked_key, second.delivery_tag)  # still in flight
    second.ack()
    assert client.hlen(channel.unacked_key) == 0


def test_a_requeue_of_a_tag_already_acknowledged_moves_nothing(channel: Any) -> None:
    requeue_unacked(channel, channel.client, "gone")
    assert channel.client.llen(QUEUE) == 0
