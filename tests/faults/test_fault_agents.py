"""Agents that die, freeze or are cut off mid-job: every job is stored once, no two benchmarks
overlap on the box, and a frozen agent's late result never becomes a job's result.

(The SIGKILL scenario replaces tests/integration/test_faults.py's first test, the SIGSTOP one
tests/integration/test_fencing.py's first: their assertions live on here.)
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from jobs.protocol import LEASE_KEY
from tests.faults.ledger import alive
from tests.faults.scenario import Scenario, wait_until

pytestmark = pytest.mark.integration


def _all_ended(scenario: Scenario) -> bool:
    runs = scenario.watch.ledger().runs.values()
    return all(run.until < math.inf for run in runs)


def test_agent_sigkill_mid_job(scenario: Scenario, start_worker: Any, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    hold.touch()  # the first run waits until the agent is dead: killed mid-run, for sure
    config = scenario.config("box", hold=hold)
    first = start_worker(config)
    scenario.submit(["box"], [96, 128, 160])
    wait_until("no benchmark started", lambda: scenario.watch.ledger().runs, log=first.log_text)
    first.kill()
    # The engine dies with its agent (no orphan benchmark left running on the box).
    wait_until("llama-bench outlived its SIGKILLed agent", lambda: _all_ended(scenario), 30)
    hold.unlink()
    assert scenario.client.hlen("unacked") == 1  # delivered, never acknowledged
    assert scenario.client.xlen("orch:results") == 0

    second = start_worker(config, timeout_s=90)  # waits out the dead agent's lease
    scenario.wait(log=second.log_text)
    figures = scenario.finish()
    assert figures.runs_restarted == 1 and figures.completed_twice == 0, figures
    assert "re-queued 1 job(s)" in second.log_text()
    assert sorted(r.attempt for r in scenario.watch.published()) == [1, 1, 2]
    assert scenario.client.hlen("unacked") == 0 and scenario.client.llen("orch.box.default") == 0


def test_agent_sigstop_beyond_the_lease(
    scenario: Scenario, start_worker: Any, tmp_path: Path
) -> None:
    hold = tmp_path / "hold"
    hold.touch()  # the frozen agent's run lasts until the successor has started
    config = scenario.config("box", hold=hold)
    first = start_worker(config)
    scenario.submit(["box"], [96, 128, 160])
    wait_until("no benchmark started", lambda: scenario.watch.ledger().runs, log=first.log_text)
    os.kill(first.proc.pid, signal.SIGSTOP)  # mid-job; its benchmark runs on
    try:
        lease = LEASE_KEY.format(host="box")
        wait_until(
            "the frozen agent's lease did not expire", lambda: not scenario.client.exists(lease)
        )
        second = start_worker(config, wait=False)
        wait_until(
            "the new agent did not wait for the frozen one",
            lambda: f"waiting for pid {first.proc.pid}" in second.log_text(),
            log=second.log_text,
        )
        assert len(scenario.watch.ledger().runs) == 1  # nothing started beside the frozen run
    finally:
        hold.unlink(missing_ok=True)
        os.kill(first.proc.pid, signal.SIGCONT)
    wait_until(
        "the frozen agent did not stop", lambda: first.proc.poll() is not None, log=first.log_text
    )
    scenario.wait(log=second.log_text)

    figures = scenario.finish()
    # The frozen agent's run completed after SIGCONT; its result was refused (fencing) and
    # the job ran again under the new lease, after it: counted, never stored.
    assert figures.runs == 4 and figures.runs_restarted == 1, figures
    assert figures.completed_twice == 1, figures
    assert "lease is not ours" in first.log_text()
    published = scenario.watch.published()
    assert {r.lease_generation for r in published} == {2}  # nothing of the frozen agent's
    assert sorted(r.attempt for r in published) == [1, 1, 2]
    assert scenario.client.hlen("unacked") == 0 and scenario.client.llen("orch.box.default") == 0
    assert not alive(first.proc.pid)
