"""Single-box mode: no broker configured, an embedded Valkey and a local worker instead."""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.store import Store
from tests.integration.conftest import orch, write_worker_config


def test_demo_prints_a_table_measured_by_llama_cpp(tmp_path: Path, llama_bin: Path) -> None:
    store_path = tmp_path / "orch.db"
    done = orch("--store", str(store_path), "demo", timeout=900)
    assert done.returncode == 0, done.stderr

    # Metrics as rows under each (engine, model, context), the host as the column.
    lines = done.stdout.splitlines()
    # median [95% bootstrap CI], unstable (⚠), disturbed (↯: the demo runs on a busy box too)
    ci = r"[\d.]+ \[[\d.]+–[\d.]+\] n=8( ⚠)?( ↯)?"
    # tg and pp are the engines' own figures: every repetition counts, busy box or not.
    assert len([line for line in lines if re.search(rf"tg tokens/s\s+{ci}$", line)]) == 8
    assert len([line for line in lines if re.search(rf"pp tokens/s\s+{ci}$", line)]) == 8
    # TTFT is the client's: a request whose stream arrived in one burst (the client starved
    # on a busy box) is left out, so a llama-server cell has a TTFT row exactly when one of
    # its requests was not a burst (below 6 samples a cell shows its range, not a CI).
    client_timed = r"[\d.]+ ([\[(][\d.]+–[\d.]+[\])] )?n=[1-8]( ⚠)?( ↯)?"
    ttft_rows = [line for line in lines if "TTFT (s)" in line]
    assert all(re.search(rf"TTFT \(s\)\s+{client_timed}$", row) for row in ttft_rows), ttft_rows
    store = Store.open(store_path)
    [campaign] = store.campaign_overview()
    timed_cells = [
        row for row in store.campaign_jobs(campaign.campaign)
        if row.spec.engine == "llama-server" and row.result is not None
        and any(not r.stream_burst for r in row.result.requests)
    ]  # fmt: skip
    assert len(ttft_rows) == len(timed_cells)
    # the engine is named once, on its first row
    assert len([line for line in lines if re.match(r"llama-(bench|server)\s", line)]) == 2
    # every figure printed is in the store, measured by llama.cpp
    assert campaign.total == campaign.ok == 8
    for job in store.campaign_jobs(campaign.campaign):
        assert job.result is not None and job.result.engine is not None
        assert job.result.engine.name == job.spec.engine
        assert job.result.argv[0].endswith(job.spec.engine)

    # The same campaign against a baseline: every other cell gets a ratio and a verdict.
    report = orch("--store", str(store_path), "report", campaign.campaign,
                  "--baseline", "model=tiny:q8_0", "--metrics", "tg,pp")  # fmt: skip
    assert report.returncode == 0, report.stderr
    verdicts = re.findall(r"· [\d.]+× (faster|slower|≈|≈ disturbed)$", report.stdout, re.MULTILINE)
    assert len(verdicts) == 8  # tg and pp of the 4 tiny:q4_k_m configurations
    # The demo runs on whatever box the tests run on, busy or not: a pair with a run that its
    # worker found disturbed gets no verdict (tg and pp both), every other pair gets one.
    disturbed = {
        (job.spec.engine, job.spec.context)
        for job in store.campaign_jobs(campaign.campaign)
        if job.result is not None and job.result.disturbed
    }
    assert verdicts.count("≈ disturbed") == 2 * len(disturbed)
    assert "Ratios are to model tiny:q8_0" in report.stdout


def test_submit_local_runs_the_users_matrix(
    tmp_path: Path, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    config = write_worker_config(tmp_path / "w.yaml", "solo-box", llama_bin, tiny_models)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "campaign: local-one\nrepetitions: 2\nworkload: {prompt_tokens: 16, gen_tokens: 8}\n"
        "hosts: [solo-box]\nmatrix: {model: ['tiny:q4_k_m'], context: [64, 128]}\n"
    )
    store_path = tmp_path / "orch.db"
    done = orch("--store", str(store_path), "submit", str(matrix), "--local",
                "--worker-config", str(config))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "local-one"
    assert "2/2 jobs finished" in done.stdout
    two = r"tg tokens/s\s+[\d.]+ \([\d.]+–[\d.]+\) n=2$"  # median (range): no CI at n=2
    assert len(re.findall(two, done.stdout, re.MULTILINE)) == 2

    # the results outlive the embedded broker
    report = orch("--store", str(store_path), "report", "local-one", "--format", "csv")
    assert report.returncode == 0, report.stderr
    lines = report.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("campaign,job_id,host")
    assert all(",ok," in line for line in lines[1:])
