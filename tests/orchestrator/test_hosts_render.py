"""`orch hosts` on inventories as agents publish them (a real broker, its clock)."""

from __future__ import annotations

from typing import Any

from jobs.inventory import WorkerInventory
from jobs.protocol import INVENTORY_KEY
from orchestrator.broker import broker_time
from orchestrator.hosts import render_hosts


def _publish(redis_client: Any, host: str, last_seen: float, **extra: Any) -> None:
    inventory = WorkerInventory(
        host=host, queue=f"orch.{host}.default", version="t", instance_id="i", pid=42,
        started_at=last_seen, last_seen=last_seen, **extra,
    )  # fmt: skip
    redis_client.set(INVENTORY_KEY.format(host=host), inventory.model_dump_json())


def test_a_successor_waiting_for_a_frozen_predecessor_is_online_and_says_so(
    redis_client: Any,
) -> None:
    now = broker_time(redis_client)
    _publish(redis_client, "busy", now, waiting_for="pid 7 (lease generation 3)")
    _publish(redis_client, "idle", now)
    _publish(redis_client, "gone", now - 3600, waiting_for="pid 8 (lease generation 1)")

    heads = [line for line in render_hosts(redis_client).splitlines() if line[:1] != " "]
    assert heads[0].startswith(
        "busy  (online, waiting for pid 7 (lease generation 3) to exit: it lost the lease"
    )
    assert heads[2].startswith("gone  (offline, last seen")  # an old wait is not news
    assert heads[4].startswith("idle  (online; orch t")
