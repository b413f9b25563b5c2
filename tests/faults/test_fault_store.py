"""A coordinator's store damaged mid-campaign: the coordinator says so (a message and an exit
code, no traceback), and a new store reading the same broker gets every result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.store import Store
from tests.faults.scenario import Scenario, wait_until
from tests.integration.conftest import orch

pytestmark = pytest.mark.integration

PAGE_BYTES = 4096  # SQLite's default page size: page 1 holds the header and the schema


def _collected(path: Path, scenario: Scenario) -> int:
    store = Store.open(path)
    try:
        store.collect(scenario.client)
        return sum(row.result is not None for row in store.campaign_jobs(scenario.name))
    finally:
        store.close()


def test_store_damaged_mid_campaign(scenario: Scenario, start_worker: Any) -> None:
    agent = start_worker(scenario.config("box"))
    scenario.submit(["box"], [96, 128, 160, 192])
    damaged = scenario.store_path
    wait_until("no result arrived", lambda: _collected(damaged, scenario) > 0, log=agent.log_text)

    data = bytearray(damaged.read_bytes())
    data[2 * PAGE_BYTES :] = b"\xff" * (len(data) - 2 * PAGE_BYTES)  # the tables' pages
    damaged.write_bytes(bytes(data))
    status = orch("--store", str(damaged), "status", scenario.name, "--broker", scenario.broker_url)
    assert status.returncode == 2 and "Traceback" not in status.stderr, status.stderr
    assert f"the result store {damaged} is damaged" in status.stderr

    fresh = scenario.tmp_path / "new.db"  # a new store, reading the same broker
    wait_until(
        "not every job was reported",
        lambda: len({r.job_id for r in scenario.watch.published()}) == len(scenario.jobs),
        timeout_s=240,
        log=agent.log_text,
    )
    figures = scenario.finish(stores=[fresh])
    assert figures.runs == len(scenario.jobs) and figures.runs_restarted == 0, figures
