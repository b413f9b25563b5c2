"""The spine end to end: two real workers as two hosts, real llama-bench, the issue's matrix."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import redis

from orchestrator.store import Store
from tests.integration.conftest import orch, write_worker_config

# The matrix, as shipped for users to start from.
MATRIX = (Path(__file__).resolve().parents[2] / "examples" / "matrix.yaml").read_text()


def test_matrix_runs_on_two_hosts_and_reports(
    tmp_path: Path,
    broker: str,
    start_worker: Any,
    llama_bin: Path,
    tiny_models: dict[str, Path],
) -> None:
    for host, form, watts in (("laptop-80w", "laptop", 80), ("minipc-120w", "mini-pc", 120)):
        config = write_worker_config(
            tmp_path / f"{host}.yaml", host, llama_bin, tiny_models,
            form_factor=form, power_limit_w=watts, vram_split="32G",
        )  # fmt: skip
        start_worker(config)
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(MATRIX)
    store_path = tmp_path / "orch.db"

    done = orch("--store", str(store_path), "submit", str(matrix), "--broker", broker,
                "--wait", "--json", "--timeout", "300")  # fmt: skip
    assert done.returncode == 0, done.stderr
    submitted = json.loads(done.stdout.splitlines()[0])
    assert submitted["campaign"] == "halo-vs-laptop"
    assert len(submitted["published"]) == 7
    assert submitted["notes"] == []  # both hosts online, in the configuration the jobs want
    assert submitted["queues"] == ["orch.laptop-80w.vram-32G", "orch.minipc-120w.vram-32G"]

    store = Store.open(store_path)
    rows = store.campaign_jobs("halo-vs-laptop")
    assert len(rows) == 7
    for row in rows:
        result = row.result
        assert result is not None, row.spec
        assert result.status.value == "ok", result.error
        assert result.host == row.spec.host  # every job ran on its own host
        assert result.declared["vram_split"] == "32G"
        assert {m.test for m in result.measurements} == {"pp", "tg"}
        for m in result.measurements:
            assert len(m.samples_ts) == 3  # each cell has the 3 repetitions
            assert all(ts > 0 for ts in m.samples_ts)
            # the row's context is filled: depth + prompt + gen == context
            assert m.n_depth == row.spec.context - 64 - 32
        assert result.engine is not None and result.engine.build_commit

    table = orch("--store", str(store_path), "report", "halo-vs-laptop")
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if line.startswith("model"))
    assert "laptop-80w" in header and "minipc-120w" in header
    tg_rows = [line for line in table.stdout.splitlines() if "tg tokens/s" in line]
    assert len(tg_rows) == 5  # 5 configurations, metrics as rows
    assert sum(line.count(" n=3") for line in tg_rows) == 7  # 7 jobs, 3 repetitions each

    md = orch("--store", str(store_path), "report", "halo-vs-laptop", "--format", "md")
    pipe_rows = [line for line in md.stdout.splitlines() if line.startswith("|")]
    assert len([line for line in pipe_rows if re.search(r"\|\s*tg tokens/s\s*\|", line)]) == 5
    assert len({line.count("|") for line in pipe_rows}) == 1

    # Re-submitting the same file queues nothing new.
    again = orch("--store", str(store_path), "submit", str(matrix), "--broker", broker, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["published"] == []
    assert len(json.loads(again.stdout)["done"]) == 7
    client = redis.Redis.from_url(broker)
    assert client.llen("orch.laptop-80w.vram-32G") == 0
    assert client.llen("orch.minipc-120w.vram-32G") == 0


def test_results_wait_in_the_broker_while_no_coordinator_runs(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    config = write_worker_config(tmp_path / "w.yaml", "box", llama_bin, tiny_models)
    start_worker(config)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "campaign: later\nrepetitions: 2\nworkload: {prompt_tokens: 16, gen_tokens: 8}\n"
        "hosts: [box]\nmatrix: {model: ['tiny:q8_0'], context: [128, 256]}\n"
    )
    store_path = tmp_path / "orch.db"
    sent = orch("--store", str(store_path), "submit", str(matrix), "--broker", broker)
    assert sent.returncode == 0, sent.stderr

    client = redis.Redis.from_url(broker)
    for _ in range(600):  # the jobs finish with no coordinator process running
        if client.xlen("orch:results") == 2:
            break
        time.sleep(0.1)
    assert client.xlen("orch:results") == 2

    status = orch("--store", str(store_path), "status", "later", "--broker", broker)
    assert status.returncode == 0, status.stderr
    assert "2/2 jobs finished" in status.stdout
    assert "box" in status.stdout and "online" in status.stdout
    rows = Store.open(store_path).campaign_jobs("later")
    assert [r.result.status.value for r in rows if r.result] == ["ok", "ok"]


def test_both_engines_through_real_workers_report_ttft_tg_and_pp(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    start_worker(write_worker_config(tmp_path / "w.yaml", "box", llama_bin, tiny_models))
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "campaign: engines\nrepetitions: 3\nworkload: {prompt_tokens: 64, gen_tokens: 32}\n"
        "hosts: [box]\nmatrix:\n  engine: [llama-bench, llama-server]\n"
        "  model: ['tiny:q8_0']\n  context: [512, 1024]\n"
    )
    store_path = tmp_path / "orch.db"
    done = orch("--store", str(store_path), "submit", str(matrix), "--broker", broker,
                "--wait", "--timeout", "300")  # fmt: skip
    assert done.returncode == 0, done.stderr

    lines = done.stdout.splitlines()
    for metric in ("tg tokens/s", "pp tokens/s"):  # the engines' own figures: all 3, always
        rows = [line for line in lines if metric in line]
        assert len(rows) == 4, metric
        assert all(re.search(r" n=3( ⚠)?$", row) for row in rows), rows

    jobs = Store.open(store_path).campaign_jobs("engines")
    server_jobs = [j for j in jobs if j.spec.engine == "llama-server"]
    assert [j.result.status.value for j in server_jobs if j.result] == ["ok", "ok"]
    # TTFT (llama-server's 2 configurations only) counts the requests whose stream did not
    # arrive in one burst (a client starved on a busy box): the table agrees with the store.
    timed = [sum(not r.stream_burst for r in j.result.requests) for j in server_jobs if j.result]
    ttft_rows = [line for line in lines if "TTFT (s)" in line]
    assert sorted(int(re.search(r" n=(\d+)", row)[1]) for row in ttft_rows) == sorted(  # type: ignore[index]
        n for n in timed if n
    ), (ttft_rows, timed)
    for job in server_jobs:
        assert job.result is not None and len(job.result.requests) == job.spec.repetitions
        for r in job.result.requests:
            # the client's TTFT holds the server's own prefill time, and the stream ends after
            assert r.server_timings["prompt_ms"] / 1000 <= r.ttft_s < r.e2e_s
        assert job.result.load_time_s is not None  # each context is its own server group
    status = orch("--store", str(store_path), "status", "engines", "--broker", broker)
    assert "server model loads: 2 for 2 group(s)" in status.stdout
