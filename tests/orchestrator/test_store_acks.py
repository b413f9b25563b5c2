"""A store acknowledges what it committed, and only that (orchestrator/acks.py), against a
real Valkey: the boxes forget a result only once it is on a store's disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.acks import ACKED_KEY, ack_id, acknowledged, xadd_result
from jobs.protocol import RESULTS_KEY
from jobs.result import RunResult
from orchestrator import acks as store_acks
from orchestrator.store import Store
from tests.worker.test_outbox import _result

pytestmark = pytest.mark.integration


def _body(campaign: str) -> str:
    return _result(campaign).model_dump_json()


def _rows(store: Store) -> int:
    return int(store.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])


def test_collect_acknowledges_what_it_committed_readable_or_not(
    redis_client: Any, tmp_path: Path
) -> None:
    bodies = [_body(f"c{i}") for i in range(3)] + ['{"schema_version": 999}']
    for body in bodies:
        xadd_result(redis_client, body)
    store = Store.open(tmp_path / "orch.db")
    assert store.collect(redis_client) == 3
    assert store.rejected_count() == 1  # kept on the store's disk: acknowledged too
    names = [ack_id(b) for b in bodies]
    assert acknowledged(redis_client, names) == set(names)


def test_a_result_published_again_is_recorded_once_and_acknowledged_again(
    redis_client: Any, tmp_path: Path
) -> None:
    body = _body("again")
    xadd_result(redis_client, body)
    store = Store.open(tmp_path / "orch.db")
    assert store.collect(redis_client) == 1
    redis_client.delete(ACKED_KEY)  # the broker lost its data: the box publishes it again
    xadd_result(redis_client, body)
    assert store.collect(redis_client) == 0  # the copy is a no-op
    assert _rows(store) == 1
    assert acknowledged(redis_client, [ack_id(body)]) == {ack_id(body)}


def test_a_crash_between_commit_and_acknowledgement_is_made_good_by_the_next_collect(
    redis_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = [_body(f"c{i}") for i in range(3)]
    for body in bodies:
        xadd_result(redis_client, body)
    store = Store.open(tmp_path / "orch.db")

    def crash(self: Any, entries: Any) -> None:
        raise KeyboardInterrupt("the coordinator was stopped right after the commit")

    with monkeypatch.context() as patch:
        patch.setattr(store_acks.StoreAcks, "acknowledge", crash)
        with pytest.raises(KeyboardInterrupt):
            store.collect(redis_client)
    assert _rows(store) == 3  # committed ...
    assert acknowledged(redis_client, [ack_id(b) for b in bodies]) == set()  # ... not acked

    assert store.collect(redis_client) == 0  # nothing new to read, but it catches up
    names = [ack_id(b) for b in bodies]
    assert acknowledged(redis_client, names) == set(names)


def test_no_acknowledgement_before_the_commit(
    redis_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = _body("fails")
    xadd_result(redis_client, body)
    store = Store.open(tmp_path / "orch.db")

    def full_disk(self: Store, result: RunResult) -> int:
        raise OSError("database or disk is full")

    monkeypatch.setattr(Store, "_record", full_disk)
    with pytest.raises(OSError):
        store.collect(redis_client)
    assert redis_client.zcard(ACKED_KEY) == 0
    assert redis_client.xlen(RESULTS_KEY) == 1
