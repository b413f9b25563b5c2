"""The host fingerprint end to end: detected at worker start, refused when it contradicts the
declared configuration, shown by `orch hosts`, carried by every result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchestrator.store import Store
from tests.integration.conftest import orch, write_worker_config

STRIX_HALO = Path(__file__).resolve().parent.parent / "fixtures" / "facts" / "strix-halo" / "root"


def _config(tmp_path: Path, llama_bin: Path, models: dict[str, Path], vram: str) -> Path:
    path = write_worker_config(
        tmp_path / f"w-{vram}.yaml", "halo", llama_bin, models, vram_split=vram
    )
    data = yaml.safe_load(path.read_text())
    data["facts_root"] = str(STRIX_HALO)  # the box's /sys and /proc, as a Strix Halo shows them
    data["check_declared"] = True
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_declared_carve_out_the_box_does_not_have_is_refused(
    tmp_path: Path, broker: str, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    config = _config(tmp_path, llama_bin, tiny_models, "32G")
    done = orch("worker", "--config", str(config), "--broker", broker, timeout=120)
    assert done.returncode == 2
    assert "refusing to consume orch.halo.vram-32G" in done.stderr
    assert "declared vram_split 32G but this box has a 512M carve-out" in done.stderr
    assert "mem_info_vram_total" in done.stderr


def test_hosts_shows_the_fingerprint_and_results_carry_it(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    start_worker(_config(tmp_path, llama_bin, tiny_models, "512M"))
    hosts = orch("hosts", "--broker", broker)
    assert hosts.returncode == 0, hosts.stderr
    assert "halo  (online" in hosts.stdout
    assert "Radeon 8060S" in hosts.stdout
    assert "vram_split=512M" in hosts.stdout
    assert "llama-bench" in hosts.stdout and "version:" in hosts.stdout  # engine build

    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "campaign: fp\nrepetitions: 1\nworkload: {prompt_tokens: 16, gen_tokens: 8}\n"
        "hosts: [halo]\nmatrix: {model: ['tiny:q8_0'], context: [64]}\n"
    )
    store = tmp_path / "orch.db"
    done = orch("--store", str(store), "submit", str(matrix), "--broker", broker,
                "--wait", "--timeout", "120")  # fmt: skip
    assert done.returncode == 0, done.stderr
    [row] = Store.open(store).campaign_jobs("fp")
    assert row.result is not None and row.result.host_facts is not None
    facts = row.result.host_facts
    assert facts.vram_split == "512M"
    assert facts.models["tiny:q8_0"] and len(facts.models["tiny:q8_0"]) == 64  # sha256
