"""What the broker says about the fleet's agents: did a deployed agent register?

The agents publish their inventory on the broker (`orch:inventory:<host>`) every few seconds;
a deploy is only done when the box's new agent shows up there.
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator.broker import broker_time, connect, read_fleet
from orchestrator.errors import BrokerError


def try_connect(url: str) -> tuple[Any | None, str]:
    """A client, or None and why (the broker may not be reachable from this machine)."""
    try:
        return connect(url, outage_s=0), ""  # a row says why; the other hosts go on
    except BrokerError as exc:
        return None, str(exc)


def instance_ids(client: Any) -> dict[str, str]:
    return {host: inv.instance_id for host, inv in read_fleet(client).inventories.items()}


def broker_states(client: Any | None, hosts: list[str]) -> dict[str, str]:
    """What the broker says of each host's agent (one read of every inventory)."""
    if client is None:
        return dict.fromkeys(hosts, "not checked")
    inventories, now = read_fleet(client).inventories, broker_time(client)
    return {
        host: "never registered"
        if (inv := inventories.get(host)) is None
        else "online"
        if inv.online(now)
        else "offline"
        for host in hosts
    }


def wait_registered(client: Any, hosts: dict[str, str | None], timeout_s: float) -> dict[str, bool]:
    """Wait until each host's agent is online with an instance id other than `hosts[host]`.

    `hosts` maps a host to the instance id its agent had before it was (re)started, or None
    when any online agent counts (a box the deploy did not touch).
    """
    deadline = time.monotonic() + timeout_s
    seen: dict[str, bool] = dict.fromkeys(hosts, False)
    while True:
        now = broker_time(client)
        inventories = read_fleet(client).inventories
        for host, before in hosts.items():
            inv = inventories.get(host)
            seen[host] = inv is not None and inv.online(now) and inv.instance_id != before
        if all(seen.values()) or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)
