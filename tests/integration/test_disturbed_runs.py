"""A real worker runs real llama-bench jobs while CPU hogs run beside it: the results say they
were disturbed, name a hog, and neither the report nor `orch compare` draws a verdict.

The only test that loads the box on purpose. The hogs hold every core for the whole campaign
(the engine runs with one thread, so they take most of the box), far above the default 10%
threshold whatever else the CI box is doing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.store import Store
from tests.integration.conftest import orch, write_worker_config

CAMPAIGN = "hogged"


@pytest.fixture
def hogs() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(os.cpu_count() or 2)
    ]
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_run_beside_cpu_hogs_is_disturbed_and_gives_no_verdict(
    tmp_path: Path,
    llama_bin: Path,
    tiny_models: dict[str, Path],
    hogs: list[subprocess.Popen[bytes]],
) -> None:
    # The default thresholds (other processes above 10% of the CPUs).
    config = write_worker_config(tmp_path / "w.yaml", "busy-box", llama_bin, tiny_models, {})
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        # Runs long enough (thousands of tokens: seconds, not milliseconds) that an always
        # runnable hog gets its fair share of CPU during them, however busy the box is.
        f"campaign: {CAMPAIGN}\nrepetitions: 5\nworkload: {{prompt_tokens: 64, gen_tokens: 1024}}\n"
        "hosts: [busy-box]\nmatrix: {model: ['tiny:q4_k_m', 'tiny:q8_0'], context: [2048]}\n"
    )
    store_path = tmp_path / "orch.db"
    done = orch("--store", str(store_path), "submit", str(matrix), "--local",
                "--worker-config", str(config), timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    store = Store.open(store_path)
    jobs = store.campaign_jobs(CAMPAIGN)
    assert len(jobs) == 2
    hog_pids = {f"(pid {hog.pid})" for hog in hogs}
    for job in jobs:
        result = job.result
        assert result is not None and result.status.value == "ok", result
        record = result.disturbance
        assert record is not None and record.disturbed, record
        assert record.other_cpu_fraction is not None and record.other_cpu_fraction > 0.1
        assert record.thresholds == {"max_other_cpu_fraction": 0.1}
        assert record.reasons[0].startswith("other processes used ")
        # A hog is among the top others, with the CPU seconds it used during the run.
        named = [e for e in record.top_others if any(pid in e for pid in hog_pids)]
        assert named, record.top_others
        assert all(re.search(r": [\d.]+ s$", entry) for entry in named)
        # Parts that must agree: the others' CPU fits in the box over the run.
        assert record.other_cpu_s is not None
        assert record.other_cpu_s <= record.duration_s * record.logical_cpus + 0.5
    assert "2/2 jobs finished, 2 disturbed" in done.stdout

    report = orch("--store", str(store_path), "report", CAMPAIGN, "--metrics", "tg,pp",
                  "--baseline", "model=tiny:q8_0")  # fmt: skip
    assert report.returncode == 0, report.stderr
    verdicts = re.findall(r"· [\d.]+× (.+)$", report.stdout, re.MULTILINE)
    assert verdicts == ["≈ disturbed", "≈ disturbed"], report.stdout
    assert "↯ = disturbed" in report.stdout and "Disturbed runs:" in report.stdout

    compared = orch("--store", str(store_path), "compare", "model=tiny:q8_0",
                    "model=tiny:q4_k_m", "--campaign", CAMPAIGN, "--metrics", "tg",
                    "--fail-on-regression", "1")  # fmt: skip
    # no verdict, and a guard that cannot judge does not pass
    assert compared.returncode == 1, compared.stdout + compared.stderr
    assert re.findall(r"· [\d.]+× (.+)$", compared.stdout, re.MULTILINE) == ["≈ disturbed"]
    assert "not judged: disturbed runs" in compared.stderr

    status = orch("--store", str(store_path), "status", CAMPAIGN,
                  env={"ORCH_LOCAL_DIR": str(tmp_path / "no-service")})  # fmt: skip
    assert "2/2 jobs finished (2 disturbed: no verdict drawn from them)" in status.stdout
