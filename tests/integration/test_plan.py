"""`orch plan`: memory estimates for the tiny models against real hosts' detected facts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import orch, write_worker_config
from worker.provision.tiny_model import write_tiny_models

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


@pytest.fixture(scope="module")
def tiny_q8_alone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny:q8_0 without llama.cpp (q8_0 is written in Python; only q4_k_m needs llama-quantize)."""
    [model] = write_tiny_models(tmp_path_factory.mktemp("models"), quants=("q8_0",))
    return model.path


LONG_CONTEXT = (
    "campaign: long\nrepetitions: 1\nworkload: {prompt_tokens: 16, gen_tokens: 8}\n"
    "hosts: [halo]\nmatrix:\n  model: ['tiny:q8_0']\n  context: [2K, 16K]\n"
)


def test_plan_warns_about_a_context_above_the_trained_length_from_a_file(
    tmp_path: Path, tiny_q8_alone: Path
) -> None:
    matrix = tmp_path / "m.yaml"
    matrix.write_text(LONG_CONTEXT)
    done = orch("plan", str(matrix), f"--model=tiny:q8_0={tiny_q8_alone}")
    assert done.returncode == 0, done.stderr
    # the tiny model's GGUF says llama.context_length = 8192
    assert done.stderr.splitlines() == [
        f"warning: {matrix}:7: matrix.context[1]: context 16384 is above tiny:q8_0's trained "
        f"context length of 8192 tokens (GGUF <arch>.context_length, file {tiny_q8_alone}): "
        "llama.cpp warns of a possible training context overflow"
    ]
    assert "16384" in done.stdout and "2048" in done.stdout  # both jobs are still planned


def test_plan_and_submit_warn_from_the_shape_a_worker_reports(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    start_worker(write_worker_config(tmp_path / "w.yaml", "halo", llama_bin, tiny_models))
    matrix = tmp_path / "m.yaml"
    matrix.write_text(LONG_CONTEXT)
    warning = (
        f"{matrix}:7: matrix.context[1]: context 16384 is above tiny:q8_0's trained context "
        "length of 8192 tokens (GGUF <arch>.context_length, reported by halo): llama.cpp warns "
        "of a possible training context overflow"
    )

    planned = orch("plan", str(matrix), "--broker", broker)
    assert planned.returncode == 0, planned.stderr
    assert f"warning: {warning}" in planned.stderr.splitlines()

    store = tmp_path / "orch.db"
    submitted = orch("--store", str(store), "submit", str(matrix), "--broker", broker, "--json")
    assert submitted.returncode == 0, submitted.stderr
    assert json.loads(submitted.stdout)["warnings"] == [warning]  # a warning, not a refusal
    assert len(json.loads(submitted.stdout)["published"]) == 2
