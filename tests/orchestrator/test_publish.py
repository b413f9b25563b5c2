"""Batched publishing (orchestrator.broker.Publisher, orchestrator.jobmessage) on a real Valkey:
the messages are what Celery's `send_task` writes, queues keep their order, a batch is queued
once, and the store's batch writes leave what one write per job leaves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.utils.saferepr import saferepr

from jobs.protocol import TASK_NAME, celery_settings, check_message
from jobs.spec import JobSpec, Workload
from orchestrator import broker as broker_module
from orchestrator.broker import PUBLISHED_TTL_S, Publisher
from orchestrator.errors import BrokerError
from orchestrator.jobmessage import ARGSREPR_MAXSIZE, REPR_MAXLEVELS, argsrepr
from orchestrator.store import Prediction, Store
from tests.poison import job

# Every path through the message builder: plain, settings and a configuration, a quote (argsrepr
# by saferepr), non-ASCII and control characters, an argsrepr cut at Celery's limit.
PROMPTS = [None, "What's in this image?", "编码 \n\t\\ \x7f", "long " * 400]


def _jobs() -> list[JobSpec]:
    out = []
    for i, prompt in enumerate(PROMPTS):
        workload = Workload(prompt_text=prompt, gen_tokens=8) if prompt else Workload()
        out.append(
            JobSpec.model_validate(
                {**job("box", context=64 + i).model_dump(), "workload": workload, "job_id": ""}
            )
        )
    out.append(
        JobSpec.model_validate(
            {**job("box").model_dump(), "configuration": {"vram_split": "32G"},
             "settings": {"power_limit_w": "45", "platform_profile": "quiet"}, "job_id": ""}
        )
    )  # fmt: skip
    return out


def _celery_message(url: str, client: Any, spec: JobSpec) -> bytes:
    """What Celery itself queues for `spec` (as orch published before it built messages)."""
    app = Celery("orch-coordinator", broker=url, set_as_current=False)
    app.conf.update(celery_settings())
    try:
        app.send_task(
            TASK_NAME, args=[spec.model_dump(mode="json")], queue=spec.queue,
            routing_key=spec.queue, task_id=spec.job_id,
        )  # fmt: skip
    finally:
        app.close()
    raw: bytes = client.rpop(spec.queue)
    return raw


def _without_ids(raw: bytes) -> tuple[str, dict[str, Any]]:
    """The message with its per-message and per-producer uuids blanked, and them apart."""
    envelope = json.loads(raw)
    ids = {k: envelope["properties"].pop(k) for k in ("delivery_tag", "reply_to")}
    return json.dumps(envelope), ids


def test_messages_are_what_celery_send_task_writes(broker: str, redis_client: Any) -> None:
    publisher = Publisher(broker)
    try:
        for spec in _jobs():
            publisher.publish(spec)
            ours = redis_client.rpop(spec.queue)
            celerys = _celery_message(broker, redis_client, spec)
            assert check_message(ours, spec.queue) == spec
            # The same bytes, but for two uuids: the message's delivery tag, and the reply
            # address of the producer (orch asks for no replies).
            ours_text, our_ids = _without_ids(ours)
            celery_text, _ = _without_ids(celerys)
            assert ours_text == celery_text
            assert json.loads(ours)["properties"]["delivery_tag"] != our_ids["reply_to"]
    finally:
        publisher.close()


def test_argsrepr_is_celerys_saferepr() -> None:
    for spec in _jobs():
        data = spec.model_dump(mode="json")
        expected = saferepr([data], ARGSREPR_MAXSIZE, maxlevels=REPR_MAXLEVELS)
        assert argsrepr(data, json.dumps(data)) == expected


def test_batches_keep_each_queues_order_and_are_reported_once(
    broker: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "PUBLISH_BATCH_JOBS", 7)
    specs = [job(host, context=64 + i) for i in range(30) for host in ("a", "b")]
    batches: list[list[str]] = []
    publisher = Publisher(broker)
    try:
        count = publisher.publish_many(
            specs, on_published=lambda b: batches.append([j.job_id for j in b])
        )
    finally:
        publisher.close()
    assert count == len(specs)
    assert [len(b) for b in batches] == [7] * 8 + [4]
    assert [i for b in batches for i in b] == [j.job_id for j in specs]
    for queue in ("orch.a.default", "orch.b.default"):
        # Consumers pop from the right: that end holds the first published.
        popped = [check_message(r, queue).job_id for r in redis_client.lrange(queue, 0, -1)][::-1]
        assert popped == [j.job_id for j in specs if j.queue == queue]


def test_a_batch_sent_again_is_not_queued_twice(broker: str, redis_client: Any) -> None:
    """What the broker does when a batch is retried after its reply was lost in an outage."""
    publisher = Publisher(broker)
    try:
        publisher.publish(job("a"))  # connects and loads the script
        keys, args = ["orch:published:test", "orch.a.default"], [PUBLISHED_TTL_S, "m"]
        assert publisher._push_once(keys=keys, args=args) == 1
        assert publisher._push_once(keys=keys, args=args) == 0
    finally:
        publisher.close()
    assert redis_client.lrange("orch.a.default", 0, 0) == [b"m"]
    assert redis_client.llen("orch.a.default") == 2


def test_an_oversized_job_stops_before_its_batch_is_sent(
    broker: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "PUBLISH_BATCH_JOBS", 2)
    huge = JobSpec.model_validate(
        {**job("a").model_dump(), "workload": Workload(prompt_text="x" * 800_000), "job_id": ""}
    )
    specs = [job("a", context=64 + i) for i in range(3)] + [huge]
    published: list[JobSpec] = []
    publisher = Publisher(broker)
    try:
        with pytest.raises(BrokerError, match="over the .*-byte limit of a queued job"):
            publisher.publish_many(specs, on_published=published.extend)
    finally:
        publisher.close()
    assert published == specs[:2]
    assert redis_client.llen("orch.a.default") == 2


def _rows(store: Store, table: str, without: tuple[int, ...] = ()) -> list[tuple[Any, ...]]:
    """A table's rows, in order, without the columns `without` (times of writing)."""
    rows = store.conn.execute(f"SELECT * FROM {table}").fetchall()
    return sorted(tuple(v for i, v in enumerate(r) if i not in without) for r in rows)


def test_batch_writes_leave_what_one_write_per_job_leaves(tmp_path: Path) -> None:
    specs = [job("a", context=64 + i) for i in range(5)] + [job("b", campaign="other")]
    prediction = Prediction("fits", 123, "fits (1.0 GB of 2.0 GB)")
    one, batch = Store.open(tmp_path / "one.db"), Store.open(tmp_path / "batch.db")
    for store in (one, batch):
        store.mark_cancelled([specs[0].job_id])
        store.conn.execute(
            "INSERT INTO results VALUES (?, 'poison', 'a', 'skipped', 0, '{}', 't', 't')",
            (specs[1].job_id,),
        )
    for spec in specs:
        one.record_prediction(spec.job_id, prediction)
        if spec is specs[1]:
            one.forget_result(spec.job_id)
        one.record_job(spec)
    batch.record_predictions((spec.job_id, prediction) for spec in specs)
    batch.record_jobs(specs, forget_results={specs[1].job_id})
    times = {"jobs": (5,), "predictions": (4,), "campaigns": (1, 2)}  # columns holding times
    for table, columns in times.items():
        assert _rows(one, table, columns) == _rows(batch, table, columns)
    for table in ("cancelled", "results"):
        assert _rows(one, table) == _rows(batch, table) == []
    one.close()
    batch.close()


def test_a_batch_that_fails_to_go_out_stops_the_rest(
    broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "PUBLISH_BATCH_JOBS", 2)
    specs = [job("a", context=64 + i) for i in range(9)]
    real_push, sent = Publisher._push, []

    def push(self: Publisher, batch: list[JobSpec], raw: list[str]) -> None:
        if len(sent) == 2:
            raise BrokerError("the broker went away")
        real_push(self, batch, raw)
        sent.append(batch)

    monkeypatch.setattr(Publisher, "_push", push)
    reported: list[JobSpec] = []
    publisher = Publisher(broker)
    try:
        with pytest.raises(BrokerError, match="went away"):
            publisher.publish_many(specs, on_published=reported.extend)
    finally:
        publisher.close()
    assert reported == specs[:4] == [j for b in sent for j in b]
