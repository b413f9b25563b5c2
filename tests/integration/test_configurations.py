"""A box "rebooted" into another BIOS carve-out picks up the jobs that waited for it; failed
jobs can be retried."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import redis

from orchestrator.store import Store
from orchestrator.submit import wait_for
from tests.integration.conftest import orch, write_worker_config


def _states(store: Store, campaign: str) -> dict[tuple[str, str], str]:
    return {
        (row.spec.model, row.spec.configuration["vram_split"]): (
            row.result.status.value if row.result else "waiting"
        )
        for row in store.campaign_jobs(campaign)
    }


def test_reboot_into_another_carve_out_then_retry_the_failures(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    models = {"tiny:q8_0": tiny_models["tiny:q8_0"], "broken:q4": broken}
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "campaign: reboot\nrepetitions: 1\nworkload: {prompt_tokens: 16, gen_tokens: 8}\n"
        "hosts: [halo]\nmatrix: {model: ['tiny:q8_0', 'broken:q4'], context: [64],\n"
        "         vram_split: [32G, 512M]}\n"
    )
    store_path = tmp_path / "orch.db"
    store = Store.open(store_path)
    client = redis.Redis.from_url(broker)

    at_32g = start_worker(write_worker_config(tmp_path / "32g.yaml", "halo", llama_bin, models,
                                              vram_split="32G"))  # fmt: skip
    sent = orch("--store", str(store_path), "submit", str(matrix), "--broker", broker)
    assert sent.returncode == 0, sent.stderr
    deadline = time.monotonic() + 120
    while list(_states(store, "reboot").values()).count("waiting") > 2:
        assert time.monotonic() < deadline
        store.collect(client)
        time.sleep(0.2)
    assert _states(store, "reboot") == {
        ("tiny:q8_0", "32G"): "ok",
        ("broken:q4", "32G"): "load_failed",
        ("tiny:q8_0", "512M"): "waiting",
        ("broken:q4", "512M"): "waiting",
    }
    status = orch("--store", str(store_path), "status", "reboot", "--broker", broker)
    assert "halo: 2 job(s) wait for vram_split=512M (now vram_split=32G)" in status.stdout

    at_32g.stop()  # the owner reboots into the 512M BIOS setting
    start_worker(write_worker_config(tmp_path / "512m.yaml", "halo", llama_bin, models,
                                     vram_split="512M"))  # fmt: skip
    assert wait_for(store, client, "reboot", timeout_s=120, poll_s=0.2).done
    assert _states(store, "reboot")[("tiny:q8_0", "512M")] == "ok"
    assert _states(store, "reboot")[("broken:q4", "512M")] == "load_failed"

    shutil.copyfile(tiny_models["tiny:q8_0"], broken)  # the owner fixes the model file
    retried = orch("--store", str(store_path), "retry", "reboot", "--failed", "--broker", broker)
    assert retried.returncode == 0, retried.stderr
    assert "2 failed job(s) of reboot queued again" in retried.stdout
    deadline = time.monotonic() + 120
    while _states(store, "reboot")[("broken:q4", "512M")] != "ok":
        assert time.monotonic() < deadline, _states(store, "reboot")
        store.collect(client)
        time.sleep(0.2)
    [row] = [
        r
        for r in store.campaign_jobs("reboot")
        if (r.spec.model, r.spec.configuration["vram_split"]) == ("broken:q4", "512M")
    ]
    # the retry counts on from the failure (attempt 2), so it supersedes it in every store
    assert row.result is not None and row.result.attempt == 2
    # the 32G failure waits for the box to be back in 32G
    assert _states(store, "reboot")[("broken:q4", "32G")] == "waiting"


def test_cancel_drains_the_campaigns_queues_and_a_resubmit_resumes(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    start_worker(write_worker_config(tmp_path / "w.yaml", "halo", llama_bin, tiny_models,
                                     vram_split="32G"))  # fmt: skip
    matrix = tmp_path / "m.yaml"
    matrix.write_text(  # jobs for a carve-out the box is not in: they wait in their queue
        "campaign: later\nrepetitions: 1\nworkload: {prompt_tokens: 16, gen_tokens: 8}\n"
        "hosts: [halo]\nmatrix: {model: ['tiny:q8_0', 'tiny:q4_k_m'], context: [64],\n"
        "         vram_split: [512M]}\n"
    )
    store_path = tmp_path / "orch.db"
    client = redis.Redis.from_url(broker)
    assert (
        orch("--store", str(store_path), "submit", str(matrix), "--broker", broker).returncode == 0
    )
    assert client.llen("orch.halo.vram-512M") == 2

    done = orch("--store", str(store_path), "cancel", "later", "--broker", broker)
    assert done.returncode == 0, done.stderr
    assert "2 job(s) taken out of their queues, 0 running" in done.stdout
    assert client.llen("orch.halo.vram-512M") == 0
    report = orch("--store", str(store_path), "report", "later")
    assert report.stdout.count("cancelled") == 2
    # cancelled jobs are neither waiting nor a reason to reboot
    status = orch("--store", str(store_path), "status", "later", "--broker", broker).stdout
    assert re.search(r"orch\.halo\.vram-512M\s+2\n", status), status  # the cancelled column
    assert "wait for" not in status
    overview = orch("--store", str(store_path), "status", "--broker", broker).stdout
    assert re.search(r"later .* 2\s+0\s+0\s+2\s+0\n", overview), overview  # 2 cancelled

    again = orch("--store", str(store_path), "submit", str(matrix), "--broker", broker, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["requeued"] == []  # resumed, not "lost by the broker"
    assert client.llen("orch.halo.vram-512M") == 2  # resumed
    report = orch("--store", str(store_path), "report", "later")
    assert "cancelled" not in report.stdout and report.stdout.count("waiting") == 2
