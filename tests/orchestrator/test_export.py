"""`orch export CAMPAIGN --format jsonl`: every stored result whole, one per line."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from jobs.result import RunResult
from orchestrator.export import export_jsonl
from orchestrator.store import Store
from tests.orchestrator.report_data import CAMPAIGN, campaign_rows, fill_store

ROOT = Path(__file__).resolve().parents[2]


def test_every_stored_result_comes_out_whole_and_nothing_else(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "orch.db")
    fill_store(store)
    out = io.StringIO()

    count = export_jsonl(store, CAMPAIGN, out)

    lines = out.getvalue().splitlines()
    expected = {row.spec.job_id: row.result for row in campaign_rows() if row.result is not None}
    assert count == len(lines) == len(expected) > 0
    exported = [RunResult.model_validate_json(line) for line in lines]
    assert [r.job_id for r in exported] == sorted(expected)  # in job id order, once each
    for result in exported:
        # What the worker sent, series, requests and job spec included.
        assert result == expected[result.job_id]
    assert any(r.telemetry is not None and r.telemetry.series for r in exported)


def test_the_command_writes_a_file_whole_or_names_the_campaign_it_lacks(tmp_path: Path) -> None:
    store_path = tmp_path / "orch.db"
    fill_store(Store.open(store_path))
    target = tmp_path / "c.jsonl"

    def orch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", "--store", str(store_path), *args],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    done = orch("export", CAMPAIGN, "--out", str(target))
    assert done.returncode == 0, done.stderr
    lines = target.read_text().splitlines()
    assert done.stderr.startswith(f"{len(lines)} result(s) of {CAMPAIGN} in {target}")
    assert not list(tmp_path.glob(".*.partial"))
    assert orch("export", CAMPAIGN).stdout.splitlines() == lines  # stdout: the same lines

    missing = orch("export", "no-such-campaign")
    assert missing.returncode != 0 and "no-such-campaign" in missing.stderr
