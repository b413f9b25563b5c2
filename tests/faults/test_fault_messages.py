"""Duplicate, misrouted and poison messages mixed with real jobs: every real job runs and is
stored once, every copy is re-announced or refused without a run, every poison kind is
dead-lettered, and the agents keep running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.deadletter import DEAD_LETTER_KEY
from orchestrator.broker import Publisher
from tests.faults.scenario import Scenario, wait_until
from tests.poison import real_poison

pytestmark = pytest.mark.integration


def test_duplicate_and_misrouted_messages(
    scenario: Scenario, start_worker: Any, tmp_path: Path
) -> None:
    hold = tmp_path / "hold"
    hold.touch()  # box-a's first run waits: its queue stays as the test leaves it
    agent_a = start_worker(scenario.config("box-a", hold=hold))
    agent_b = start_worker(scenario.config("box-b", hold=hold))
    scenario.submit(["box-a", "box-b"], [96, 128])
    wait_until(
        "no benchmark started on both boxes",
        lambda: {r.box for r in scenario.watch.ledger().runs.values()} == {"box-a", "box-b"},
        log=agent_a.log_text,
    )

    client = scenario.client
    publisher = Publisher(scenario.broker_url)
    try:
        for job in scenario.jobs.values():
            publisher.publish(job)  # a copy in its own queue (a publisher that retried)
            if job.host == "box-a":
                publisher.publish(job)  # and one more, moved to box-b's queue (misrouted)
                client.lpush("orch.box-b.default", client.lpop(job.queue))
    finally:
        publisher.close()
    # box-b: its job not started yet, a copy of each of its jobs, two misrouted copies
    assert client.llen("orch.box-b.default") == 5 and client.llen("orch.box-a.default") == 3
    hold.unlink()
    scenario.wait(log=agent_a.log_text)
    wait_until(
        "the copies were not all consumed",
        lambda: not client.llen("orch.box-a.default") + client.llen("orch.box-b.default"),
    )
    wait_until(
        "the misrouted copies were not dead-lettered", lambda: client.llen(DEAD_LETTER_KEY) == 2
    )

    figures = scenario.finish(dead_letters=client.llen(DEAD_LETTER_KEY))
    assert figures.runs == 4 and figures.runs_restarted == 0, figures  # copies never ran
    assert agent_a.proc.poll() is None and agent_b.proc.poll() is None
    assert "already has a result" in agent_a.log_text() + agent_b.log_text()


def test_poison_messages_mixed_with_real_jobs(
    scenario: Scenario, start_worker: Any, tmp_path: Path
) -> None:
    client = scenario.client
    poison = real_poison(scenario.broker_url, client, "box")  # before the agent consumes
    hold = tmp_path / "hold"
    hold.touch()
    agent = start_worker(scenario.config("box", hold=hold))
    scenario.submit(["box"], [96, 128, 160])
    wait_until("no benchmark started", lambda: scenario.watch.ledger().runs, log=agent.log_text)

    # The queue holds the two jobs not started yet: interleave every poison kind with them
    # (kombu pushes left and pops right: the rightmost runs next).
    queue = "orch.box.default"
    waiting = [client.rpop(queue), client.rpop(queue)]
    assert client.llen(queue) == 0 and all(waiting)
    kinds = list(poison.values())
    half = len(kinds) // 2
    for raw, _reason in kinds[:half]:
        client.lpush(queue, raw)
    client.lpush(queue, waiting[0])
    for raw, _reason in kinds[half:]:
        client.lpush(queue, raw)
    client.lpush(queue, waiting[1])
    hold.unlink()

    scenario.wait(log=agent.log_text)
    wait_until(
        "not every poison kind was dead-lettered",
        lambda: client.llen(DEAD_LETTER_KEY) == len(poison),
        log=agent.log_text,
    )
    figures = scenario.finish(dead_letters=client.llen(DEAD_LETTER_KEY))
    assert figures.runs == 3 and figures.runs_restarted == 0, figures
    assert agent.proc.poll() is None, agent.log_text()[-3000:]
    assert "Unrecoverable error" not in agent.log_text()
    assert client.llen(queue) == 0 and client.hlen("unacked") == 0
