"""Misbehaving engines: one that hangs past the job's timeout, one that prints garbage, floods
of stdout and of stderr, and one that leaves a helper holding its pipes. Each becomes a result
(the failures as failures, with bounded output), nothing is lost, no helper outlives its job,
and the agent goes on to the next job."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.result import Status
from orchestrator.store import Store
from tests.faults.ledger import alive
from tests.faults.scenario import Scenario

pytestmark = pytest.mark.integration

PROMPT_AND_GEN = 16 + 8  # the scenario matrix's workload: -d is context minus this
# context -> (behaviour, the statuses its job's result may have); the last job is a plain one
JOBS = {
    96: ("hang", {Status.TIMEOUT}),
    128: ("garbage", {Status.ERROR}),
    160: ("flood-stdout", {Status.ERROR}),
    192: ("flood-stderr", {Status.OK}),
    224: ("orphan", {Status.OK}),
    256: ("real", {Status.OK}),
}
RESULT_CAP_BYTES = 1024 * 1024  # a stored result stays small whatever the engine printed


def test_misbehaving_engines(scenario: Scenario, start_worker: Any) -> None:
    behaviours = {ctx - PROMPT_AND_GEN: mode for ctx, (mode, _) in JOBS.items() if mode != "real"}
    agent = start_worker(scenario.config("box", behaviours=behaviours))
    scenario.submit(["box"], list(JOBS), timeout_s=8)
    scenario.wait(log=agent.log_text)

    by_context = {job.context: job.job_id for job in scenario.jobs.values()}
    expected = {by_context[ctx]: statuses for ctx, (_mode, statuses) in JOBS.items()}
    figures = scenario.finish(expected=expected)
    assert figures.runs == len(JOBS) and figures.runs_restarted == 0, figures

    ledger = scenario.watch.ledger()
    assert ledger.helpers and not [pid for pid in ledger.helpers if alive(pid)]
    store = Store.open(scenario.store_path)
    sizes = store.conn.execute("SELECT job_id, LENGTH(result) FROM results").fetchall()
    assert all(size < RESULT_CAP_BYTES for _job, size in sizes), sizes
    [timed_out] = [r.result for r in store.campaign_jobs(scenario.name) if r.spec.context == 96]
    assert timed_out is not None and "killed after 8 s" in (timed_out.error or "")
    assert agent.proc.poll() is None, agent.log_text()[-3000:]
