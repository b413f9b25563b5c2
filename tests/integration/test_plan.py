"""`orch plan`: memory estimates for the tiny models against real hosts' detected facts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.integration.conftest import orch, write_worker_config

STRIX_HALO = Path(__file__).resolve().parent.parent / "fixtures" / "facts" / "strix-halo" / "root"


def test_plan_estimates_each_job_against_the_hosts_facts(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    config = write_worker_config(
        tmp_path / "w.yaml", "halo", llama_bin, tiny_models, vram_split="512M"
    )
    data = yaml.safe_load(config.read_text())
    data["facts_root"] = str(STRIX_HALO)  # a Strix Halo box: 512M carve-out, large GTT
    config.write_text(yaml.safe_dump(data))
    start_worker(config)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "campaign: p\nworkload: {prompt_tokens: 64, gen_tokens: 32}\n"
        "hosts: [halo]\nmatrix: {model: ['tiny:q8_0', 'tiny:q4_k_m'], context: [512, 4096]}\n"
    )
    models = [f"--model={name}={path}" for name, path in tiny_models.items()]
    done = orch("plan", str(matrix), "--broker", broker, *models)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("halo")]
    assert len(rows) == 4
    assert all("fits (needs" in row for row in rows)
    # more context, more KV cache: the 4096 rows need more than the 512 ones
    kv = {(r.split()[1], r.split()[2]): float(r.split()[6]) for r in rows}  # "x.xx MiB"
    assert kv[("tiny:q8_0", "4096")] > kv[("tiny:q8_0", "512")]

    unknown = orch("plan", str(matrix))  # no broker, no model files: says what is missing
    assert unknown.returncode == 0, unknown.stderr
    assert "no file for tiny:q8_0" in unknown.stdout

    bad = orch("plan", str(matrix), "--model", "tiny:q8_0")
    assert bad.returncode == 2 and "expected NAME=PATH" in bad.stderr
