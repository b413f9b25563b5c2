"""Issue 14's "done when": `orch submit` of a concurrency sweep on two configurations (here two
hosts, each a real worker) gives a report and the HTML throughput/latency chart, measured by a
real llama-server on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobs.load import CONCURRENCY
from orchestrator.store import Store
from tests.integration.conftest import orch, write_worker_config

MATRIX = """
campaign: users
repetitions: 2
engine: llama-server
hosts: [laptop-80w, minipc-120w]
workloads:
  c1: {concurrency: 1, requests: 4, warmup_requests: 1, prompt_tokens: 16, gen_tokens: 8}
  c2: {concurrency: 2, requests: 4, warmup_requests: 1, prompt_tokens: 16, gen_tokens: 8}
matrix:
  model: ["tiny:q8_0"]
  backend: [cpu]
  context: [1024]
  workload: [c1, c2]
"""


def test_a_concurrency_sweep_on_two_hosts_reports_and_charts(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    for host in ("laptop-80w", "minipc-120w"):
        start_worker(write_worker_config(tmp_path / f"{host}.yaml", host, llama_bin, tiny_models))
    matrix = tmp_path / "users.yaml"
    matrix.write_text(MATRIX)
    store_path = tmp_path / "orch.db"

    done = orch("--store", str(store_path), "submit", str(matrix), "--broker", broker,
                "--wait", "--json", "--timeout", "600")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout.splitlines()[0])["published"]) == 4

    rows = Store.open(store_path).campaign_jobs("users")
    levels = set()
    for row in rows:
        result = row.result
        assert result is not None and result.status.value == "ok", result and result.error
        assert result.load is not None and len(result.load.runs) == 2  # one per repetition
        for run in result.load.runs:
            assert (run.summary.requests, run.summary.ok, run.summary.errors) == (4, 4, 0)
        levels.add((row.spec.host, row.spec.axes()[CONCURRENCY]))
    assert levels == {(h, c) for h in ("laptop-80w", "minipc-120w") for c in (1, 2)}

    table = orch("--store", str(store_path), "report", "users",
                 "--metrics", "throughput,tps_per_user,ttft_p90,rss")  # fmt: skip
    assert table.returncode == 0, table.stderr
    cells = [line for line in table.stdout.splitlines() if "n=2" in line]
    assert cells, table.stdout  # every figure from the two load runs of its job
    # Telemetry per load level: the engine's memory summarised over each job's load runs.
    rss = [line for line in table.stdout.splitlines() if line.lstrip().startswith("peak RSS")]
    assert rss and all(any(ch.isdigit() for ch in line.split("peak RSS (GB)")[1]) for line in rss)
    html = orch("--store", str(store_path), "report", "users", "--format", "html")
    assert html.returncode == 0, html.stderr
    assert 'data-kind="load"' in html.stdout and 'data-kind="load-users"' in html.stdout
