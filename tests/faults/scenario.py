"""A fault scenario: its agents' configs, its jobs, its ledger, its stores, its figures."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis

from jobs.result import Status
from jobs.spec import JobSpec
from orchestrator.store import Store
from orchestrator.submit import wait_for
from tests.faults.accounting import Figures, account, record
from tests.faults.ledger import Watch, engine_bin
from tests.integration.conftest import orch, write_worker_config

MATRIX = (
    "campaign: {campaign}\nrepetitions: 1\nworkload: {{prompt_tokens: 16, gen_tokens: 8}}\n"
    "timeout_s: {timeout_s}\nhosts: [{hosts}]\n"
    "matrix: {{model: ['tiny:q8_0'], context: [{contexts}]}}\n"
)


class Scenario:
    """One fault scenario's jobs, agents' configs, ledger and store."""

    def __init__(
        self,
        name: str,
        tmp_path: Path,
        broker_url: str,
        llama_bin: Path,
        models: dict[str, Path],
        figures_dir: Path,
    ) -> None:
        self.name = name
        self.tmp_path = tmp_path
        self.broker_url = broker_url
        self.llama_bin = llama_bin
        self.tiny_models = models
        self.figures_dir = figures_dir
        self.ledger = tmp_path / "ledger.jsonl"
        self.store_path = tmp_path / "orch.db"
        self.models: dict[str, dict[str, Path]] = {}
        self.jobs: dict[str, JobSpec] = {}
        self.watch = Watch(self.ledger, broker_url)
        self.client = redis.Redis.from_url(broker_url)
        self.started = time.monotonic()

    def config(
        self,
        host: str,
        *,
        hold: Path | None = None,
        hold_from_run: int = 0,
        behaviours: dict[int, str] | None = None,
    ) -> Path:
        """A worker.yaml for `host` whose llama-bench writes the ledger (tests/faults/ledger.py
        `engine_bin`: `hold`, `hold_from_run`, `behaviours`)."""
        folder = engine_bin(
            self.tmp_path / f"bin-{host}",
            host,
            self.llama_bin,
            self.ledger,
            hold=hold,
            hold_from_run=hold_from_run,
            behaviours=behaviours,
        )
        self.models[host] = dict(self.tiny_models)
        return write_worker_config(self.tmp_path / f"{host}.yaml", host, folder, self.tiny_models)

    def submit(
        self,
        hosts: list[str],
        contexts: list[int],
        *,
        timeout_s: int = 600,
    ) -> dict[str, Any]:
        """`orch submit --json` of a one-repetition campaign (one job per host and context:
        each context is its own llama-bench -d depth, so the ledger tells the jobs apart)."""
        matrix = self.tmp_path / "matrix.yaml"
        matrix.write_text(
            MATRIX.format(
                campaign=self.name,
                timeout_s=timeout_s,
                hosts=", ".join(hosts),
                contexts=", ".join(map(str, contexts)),
            )
        )
        store, url = str(self.store_path), self.broker_url
        done = orch("--store", store, "submit", str(matrix), "--broker", url, "--json")
        assert done.returncode == 0, done.stderr
        outcome: dict[str, Any] = json.loads(done.stdout)
        kept = Store.open(self.store_path)
        try:
            for row in kept.campaign_jobs(self.name):
                if row.spec.job_id in outcome["published"]:
                    self.jobs[row.spec.job_id] = row.spec
        finally:
            kept.close()
        return outcome

    def wait(self, timeout_s: float = 240, log: Any = None) -> None:
        """Until every job of the campaign has a result in the scenario's store."""
        kept = Store.open(self.store_path)
        try:
            state = wait_for(kept, self.client, self.name, timeout_s=timeout_s, poll_s=0.5)
        finally:
            kept.close()
        assert state.done, log() if log else state

    def finish(
        self,
        stores: list[Path] | None = None,
        expected: dict[str, set[Status]] | None = None,
        dead_letters: int = 0,
    ) -> Figures:
        """Account for every submitted job, write the figures, assert 0 lost, 0 duplicated,
        0 overlaps."""
        opened = [Store.open(path) for path in stores or [self.store_path]]
        try:
            for store in opened:
                store.collect(self.client)  # whatever arrived since the wait
            figures = account(
                self.name,
                list(self.jobs.values()),
                opened,
                self.watch.ledger(),
                self.watch.published(),
                self.models,
                expected=expected,
                dead_letters=dead_letters,
                started=self.started,
            )
        finally:
            for store in opened:
                store.close()
        record(figures, self.figures_dir)
        return figures


def wait_until(what: str, done: Any, timeout_s: float = 120, log: Any = None) -> None:
    """Poll `done()` until true; fail with `what` (and `log()`) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"{what}\n{log() if log else ''}"
        time.sleep(0.05)
