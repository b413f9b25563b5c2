"""The broker killed with SIGKILL mid-campaign and started again on its port: with its AOF it
comes back with its queues and results; without (its data wiped, as a broker without
persistence comes back), the coordinator re-queues what it lost by submitting again, and the
results finished but not read by any store yet come back from the agents' outboxes."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from jobs.protocol import INVENTORY_KEY
from orchestrator.embedded import EmbeddedBroker
from tests.faults.scenario import Scenario, wait_until

pytestmark = pytest.mark.integration

CONTEXTS = [96, 128, 160, 192]
DOWN_S = 3.0  # how long the broker stays dead: longer than a heartbeat, shorter than a lease


def _kill(broker: EmbeddedBroker) -> None:
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGKILL)
    broker.proc.wait(timeout=30)
    broker.proc = None


def test_broker_kill9_with_aof(
    scenario: Scenario, start_worker: Any, fault_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    hold = tmp_path / "hold"
    hold.touch()  # the second run lasts until the broker is back: killed mid-job, for sure
    agent = start_worker(scenario.config("box", hold=hold, hold_from_run=1))
    scenario.submit(["box"], CONTEXTS)
    wait_until(
        "the second job did not start",
        lambda: len(scenario.watch.ledger().runs) == 2,
        log=agent.log_text,
    )
    _kill(fault_broker)
    time.sleep(DOWN_S)  # the outage itself (nothing is measured against it)
    fault_broker.start()
    hold.unlink()
    scenario.wait(log=agent.log_text)
    figures = scenario.finish()
    assert figures.runs == len(CONTEXTS), figures  # nothing ran again
    assert agent.proc.poll() is None, agent.log_text()[-3000:]


def test_broker_kill9_without_persistence(
    scenario: Scenario, start_worker: Any, fault_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    hold = tmp_path / "hold"
    hold.touch()  # the third run lasts until the coordinator has submitted again
    agent = start_worker(scenario.config("box", hold=hold, hold_from_run=2))
    scenario.submit(["box"], CONTEXTS)
    # When the broker dies: two results in its stream, read by no store; the third job
    # running; the fourth waiting in its queue.
    wait_until(
        "the first two results and the third run did not come",
        lambda: len(scenario.watch.published()) == 2 and len(scenario.watch.ledger().runs) == 3,
        log=agent.log_text,
    )
    _kill(fault_broker)
    shutil.rmtree(fault_broker.data_dir / "appendonlydir")  # it comes back empty
    time.sleep(DOWN_S)
    fault_broker.start()
    assert not scenario.client.exists("orch:results")

    # The operator's move: once the box is seen again, submit the same matrix again; what
    # the broker lost and no result covers is queued again.
    wait_until(
        "the agent did not come back",
        lambda: scenario.client.exists(INVENTORY_KEY.format(host="box")),
        log=agent.log_text,
    )
    again = scenario.submit(["box"], CONTEXTS)
    # the two results came back from the agent's outbox, so only the running job and the
    # waiting one are queued again
    assert len(again["published"]) == 2, again
    hold.unlink()
    scenario.wait(log=agent.log_text)
    figures = scenario.finish()
    assert figures.runs == len(CONTEXTS), figures  # nothing ran again
    assert agent.proc.poll() is None, agent.log_text()[-3000:]
