"""Issue 4 end to end: three real worker processes as three hosts in different configurations.

- laptop-80w: a Strix Halo (a writable copy of its /sys fixture), booted with a 512M carve-out;
  its owner allows switching the ACPI platform profile. The matrix has it in two named
  configurations: quiet-512m (low-power) and fast-32g (a reboot away).
- minipc-120w: an RX 7900 XTX box (copy of its /sys fixture) whose owner allows the hwmon power
  cap; it runs at a 250 W cap and at stock, with a cool-down gate before each job.
- desktop: this machine as it is (CPU only), with one job too big for its RAM.

The laptop "reboots" (its worker stops, the tree's carve-out becomes 32G, the worker restarts
with 32G declared) and picks up the jobs that waited for that configuration.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import redis
import yaml

from jobs.result import Status
from orchestrator.store import Store
from orchestrator.submit import wait_for
from tests.integration.conftest import orch, write_worker_config

FACTS = Path(__file__).resolve().parent.parent / "fixtures" / "facts"
PROFILE = "sys/firmware/acpi/platform_profile"
CAP = "sys/class/drm/card0/device/hwmon/hwmon2/power1_cap"
VRAM_TOTAL = "sys/class/drm/card1/device/mem_info_vram_total"

MATRIX = """\
campaign: three-hosts
repetitions: 1
engine: llama-server
workload: {prompt_tokens: 16, gen_tokens: 8, warmup_runs: 0}
hosts: [laptop-80w, minipc-120w, desktop]
configurations:
  quiet-512m: {vram_split: 512M, platform_profile: low-power}
  fast-32g: {vram_split: 32G, platform_profile: performance}
  cap-250w: {power_limit_w: 250}
  stock: {}
matrix:
  model: ['tiny:q8_0', 'tiny:q4_k_m']
  context: [64]
  configuration: [quiet-512m, fast-32g, cap-250w, stock]
exclude:
  - {host: laptop-80w, configuration: cap-250w}
  - {host: laptop-80w, configuration: stock}
  - {host: minipc-120w, vram_split: 512M}
  - {host: minipc-120w, vram_split: 32G}
  - {host: desktop, configuration: quiet-512m}
  - {host: desktop, configuration: fast-32g}
  - {host: desktop, configuration: cap-250w}
include:
  # 2G tokens of KV cache: terabytes, more than any machine running this test has
  - {host: desktop, model: 'tiny:q8_0', context: 2000000000, configuration: stock}
"""


def _worker_config(
    path: Path, host: str, llama_bin: Path, models: dict[str, Path], root: Path | None,
    **extra: Any,
) -> Path:  # fmt: skip
    declared = extra.pop("declared", {})
    write_worker_config(path, host, llama_bin, models, **declared)
    data = yaml.safe_load(path.read_text())
    if root is not None:
        data["facts_root"] = str(root)
    data.update(extra)
    path.write_text(yaml.safe_dump(data))
    return path


def _results(store: Store, campaign: str) -> dict[tuple[str, str, str, int], Any]:
    return {
        (r.spec.host, r.spec.config_name or "-", r.spec.model, r.spec.context): r.result
        for r in store.campaign_jobs(campaign)
    }


def test_three_hosts_in_their_configurations_with_a_reboot_setters_and_a_skipped_job(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    laptop_root = tmp_path / "laptop-root"
    shutil.copytree(FACTS / "strix-halo" / "root", laptop_root, symlinks=True)
    minipc_root = tmp_path / "minipc-root"
    shutil.copytree(FACTS / "radeon-dgpu" / "root", minipc_root, symlinks=True)
    laptop_512m = _worker_config(
        tmp_path / "laptop-512m.yaml", "laptop-80w", llama_bin, tiny_models, laptop_root,
        declared={"vram_split": "512M"}, setters={"platform_profile": {}},
    )  # fmt: skip
    laptop = start_worker(laptop_512m)
    start_worker(
        _worker_config(
            tmp_path / "minipc.yaml",
            "minipc-120w",
            llama_bin,
            tiny_models,
            minipc_root,
            setters={"power_limit_w": {"method": "hwmon", "min_w": 100}},
            cooldown={"max_gpu_temp_c": 60, "settle_s": 0.5, "timeout_s": 30, "poll_s": 0.2},
        )  # fmt: skip
    )
    desktop = start_worker(
        _worker_config(tmp_path / "desktop.yaml", "desktop", llama_bin, tiny_models, None)
    )

    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(MATRIX)
    db = tmp_path / "orch.db"
    store = Store.open(db)
    client = redis.Redis.from_url(broker)

    plan = orch("plan", str(matrix), "--broker", broker)  # shapes as the hosts reported them
    assert plan.returncode == 0, plan.stderr
    assert re.search(r"desktop .* will not load: predicted OOM \(needs [\d.]+ GB", plan.stdout)
    assert "reports no GGUF shape" not in plan.stdout and "no file for" not in plan.stdout

    sent = orch("--store", str(db), "submit", str(matrix), "--broker", broker,
                "--skip-predicted-failures")  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert "10 job(s) queued" in sent.stderr and "1 skipped (predicted not to load)" in sent.stderr
    assert "laptop-80w: 2 job(s) wait for vram_split=32G (now vram_split=512M)" in sent.stderr

    deadline = time.monotonic() + 240
    while sum(1 for r in _results(store, "three-hosts").values() if r is None) > 2:
        assert time.monotonic() < deadline, _results(store, "three-hosts")
        store.collect(client)
        time.sleep(0.3)
    status = orch("--store", str(db), "status", "three-hosts", "--broker", broker)
    assert "laptop-80w: 2 job(s) wait for vram_split=32G (now vram_split=512M) — reboot" in (
        status.stdout
    )
    hosts_table = orch("--store", str(db), "status", "--broker", broker).stdout
    assert re.search(
        r"laptop-80w\s+online\s+vram-512M: quiet-512m \(now\)\s+2\s+0\s+0", hosts_table
    )
    assert re.search(r"\n\s+vram-32G: fast-32g\s+0\s+0\s+2", hosts_table), hosts_table
    # minipc's two configurations differ only at runtime: one queue, both names
    assert re.search(r"minipc-120w\s+online\s+default: cap-250w, stock \(now\)\s+4", hosts_table)
    assert "laptop-80w: 2 job(s) wait for vram_split=32G (now vram_split=512M)" in hosts_table

    # The owner reboots the laptop into the 32G BIOS setting.
    laptop.stop()
    (laptop_root / VRAM_TOTAL).write_text(f"{32 * 2**30}\n")
    start_worker(
        _worker_config(
            tmp_path / "laptop-32g.yaml",
            "laptop-80w",
            llama_bin,
            tiny_models,
            laptop_root,
            declared={"vram_split": "32G"},
            setters={"platform_profile": {}},
        )  # fmt: skip
    )
    assert wait_for(store, client, "three-hosts", timeout_s=240, poll_s=0.3).done

    results = _results(store, "three-hosts")
    assert len(results) == 11
    skipped = results[("desktop", "stock", "tiny:q8_0", 2000000000)]
    assert skipped.status is Status.SKIPPED and skipped.error.startswith("predicted OOM (needs ")
    ran = {k: r for k, r in results.items() if r.status is not Status.SKIPPED}
    assert {r.status for r in ran.values()} == {Status.OK}, {
        k: r.error for k, r in ran.items() if r.status is not Status.OK
    }

    # Runtime settings: applied, read back, restored; the facts say what the job ran under.
    quiet = ran[("laptop-80w", "quiet-512m", "tiny:q8_0", 64)]
    applied = quiet.settings["platform_profile"]
    assert (applied.previous, applied.read_back, applied.restored) == (
        "performance", "low-power", True
    )  # fmt: skip
    assert quiet.host_facts.platform_profile == "low-power"
    assert quiet.host_facts.vram_split == "512M"
    fast = ran[("laptop-80w", "fast-32g", "tiny:q8_0", 64)]
    assert not fast.settings["platform_profile"].changed  # already in performance
    assert fast.host_facts.vram_split == "32G"
    assert (laptop_root / PROFILE).read_text().strip() == "performance"
    capped = ran[("minipc-120w", "cap-250w", "tiny:q4_k_m", 64)]
    assert capped.settings["power_limit_w"].read_back == "250"
    assert capped.host_facts.power_cap_w == 250.0
    assert (minipc_root / CAP).read_text().strip() == "339000000"  # the stock cap, restored
    assert capped.cooldown is not None and capped.cooldown.settled
    assert capped.cooldown.gpu_temp_c == 38.0 and "amdgpu" in capped.cooldown.sources

    # One model load per group of jobs that can share a warm server (minipc's two power settings
    # share one); `orch status` shows the count.
    status = orch("--store", str(db), "status", "three-hosts", "--broker", broker).stdout
    loads, groups = map(
        int, re.search(r"server model loads: (\d+) for (\d+) group", status).groups()
    )
    assert loads == groups == 8, status

    report = orch("--store", str(db), "report", "three-hosts")
    assert report.returncode == 0, report.stderr
    assert "skipped: predicted OOM (needs" in report.stdout
    assert "10/10 predictions held" in report.stdout, report.stdout

    replan = orch("--store", str(db), "plan", str(matrix), "--broker", broker)
    assert re.search(r"laptop-80w .*~[\d.]+ s \(n=1\)", replan.stdout), replan.stdout

    # Skipped jobs are not failures; submitting without the flag queues them after all.
    retried = orch("--store", str(db), "retry", "three-hosts", "--failed", "--broker", broker)
    assert "0 failed job(s) of three-hosts queued again" in retried.stdout
    desktop.stop()  # so that the 2G-token job waits instead of failing to load
    again = orch("--store", str(db), "submit", str(matrix), "--broker", broker)
    assert again.returncode == 0, again.stderr
    assert "1 job(s) queued" in again.stderr and "10 already done" in again.stderr
    assert _results(store, "three-hosts")[("desktop", "stock", "tiny:q8_0", 2000000000)] is None
    flagged = orch("--store", str(db), "submit", str(matrix), "--broker", broker,
                   "--skip-predicted-failures")  # fmt: skip
    assert "0 job(s) queued, 1 already waiting" in flagged.stderr  # queued: left to run
