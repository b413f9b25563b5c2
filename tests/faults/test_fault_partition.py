"""An agent cut off from the broker mid-job for longer than its lease, then healed: its run goes
on while it is cut off, its result is published once the network is back (it takes back its
lapsed lease: nobody took it since), every job is stored once, nothing overlaps.

The agent runs in a network namespace (tests/integration/netns.py), so the cut is a real one:
its side of the veth pair goes down, and its TCP connections see silence, not resets.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.protocol import LEASE_KEY
from orchestrator.broker import read_inventories
from tests.faults.scenario import Scenario, wait_until
from tests.integration.conftest import WorkerProc
from tests.integration.netns import NetNs, netns  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
def broker_bind(netns: NetNs) -> tuple[str, ...]:  # noqa: F811
    """The broker listens on this side of the veth pair, the address the agent can reach."""
    return (netns.host_ip,)


@pytest.fixture
def broker_password() -> str:
    return "fault-partition-pw"  # Valkey refuses other addresses than loopback without one


@pytest.fixture
def agent_in(tmp_path: Path, broker: str) -> Iterator[Any]:
    """agent_in(namespace, config, host) -> WorkerProc: `orch worker` inside the namespace, its
    broker URL (with the password) in ORCH_BROKER_URL, as `orch worker` wants it."""
    started: list[WorkerProc] = []

    def start(ns: NetNs, config: Path, host: str) -> WorkerProc:
        log = tmp_path / f"worker-{host}-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns.name, sys.executable, "-m", "orchestrator",
                 "worker", "--config", str(config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "ORCH_BROKER_URL": broker},
            )  # fmt: skip
        worker = WorkerProc(host, config, log, proc)
        started.append(worker)
        client = redis.Redis.from_url(broker)
        try:
            wait_until(
                f"worker {host} did not start",
                lambda: (
                    proc.poll() is not None
                    or getattr(read_inventories(client).get(host), "pid", None) == proc.pid
                ),
                timeout_s=60,
            )
        finally:
            client.close()
        assert proc.poll() is None, worker.log_text()[-3000:]
        return worker

    yield start
    for worker in started:
        worker.stop()


def _set_link(ns: NetNs, state: str) -> None:
    """Bring the namespace's end of the veth pair down or up."""
    shown = subprocess.run(
        ["ip", "-n", ns.name, "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    [name] = [
        line.split(":")[1].strip().split("@")[0]
        for line in shown.splitlines()
        if ": lo:" not in line
    ]
    subprocess.run(["ip", "-n", ns.name, "link", "set", "dev", name, state], check=True)


def test_agent_network_partition_beyond_the_lease(
    scenario: Scenario,
    agent_in: Any,
    netns: NetNs,  # noqa: F811
    tmp_path: Path,
) -> None:
    hold = tmp_path / "hold"
    hold.touch()  # the first run waits until the agent is cut off
    agent = agent_in(netns, scenario.config("box", hold=hold), "box")
    scenario.submit(["box"], [96, 128, 160])
    wait_until("no benchmark started", lambda: scenario.watch.ledger().runs, log=agent.log_text)
    _set_link(netns, "down")
    try:
        lease = LEASE_KEY.format(host="box")
        wait_until(
            "the cut-off agent's lease did not expire", lambda: not scenario.client.exists(lease)
        )
        hold.unlink()  # the run goes on and ends while its agent is cut off
        wait_until(
            "the cut-off run did not end",
            lambda: any(r.end for r in scenario.watch.ledger().runs.values()),
        )
        assert not scenario.watch.published()  # nothing got through the cut
    finally:
        _set_link(netns, "up")
    scenario.wait(log=agent.log_text)
    figures = scenario.finish()
    assert figures.runs_restarted == 0, figures
    assert agent.proc.poll() is None, agent.log_text()[-3000:]
    assert "took it back" in agent.log_text()
