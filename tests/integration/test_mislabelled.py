"""Labels that lie: a CPU build filed under `vulkan:` ends as `mislabelled`, end to end, and a
carve-out declared on a box without an APU stops the worker at start."""

from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator.store import Store
from tests.integration.conftest import orch

NO_GPU = Path(__file__).resolve().parent.parent / "fixtures" / "facts" / "no-gpu" / "root"


def test_a_cpu_build_labelled_vulkan_is_reported_mislabelled_not_as_vulkan(
    tmp_path: Path, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    config = tmp_path / "w.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "host": "labels-box",
                # the case: both labels point at the same CPU build
                "engines": {"llama-bench": {"backends": {
                    "cpu": str(llama_bin / "llama-bench"),
                    "vulkan": str(llama_bin / "llama-bench"),
                }}},
                "models": {"tiny:q8_0": str(tiny_models["tiny:q8_0"])},
                "threads": 1,
            }
        )
    )  # fmt: skip
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "campaign: labels\nrepetitions: 2\nengine: llama-bench\n"
        "workload: {prompt_tokens: 16, gen_tokens: 8}\nhosts: [labels-box]\n"
        "matrix: {model: ['tiny:q8_0'], context: [64], backend: [cpu, vulkan]}\n"
    )
    store_path = tmp_path / "orch.db"
    done = orch("--store", str(store_path), "submit", str(matrix), "--local",
                "--worker-config", str(config), timeout=600)  # fmt: skip
    assert "2/2 jobs finished" in done.stdout, done.stdout + done.stderr
    assert "mislabelled" in done.stdout  # the vulkan cell shows the failure, not figures

    rows = {row.spec.backend: row.result for row in Store.open(store_path).campaign_jobs("labels")}
    cpu, vulkan = rows["cpu"], rows["vulkan"]
    assert cpu is not None and cpu.status.value == "ok"
    assert cpu.backend_check is not None and cpu.backend_check.verdict == "match"
    assert "-ngl" in cpu.argv and cpu.argv[cpu.argv.index("-ngl") + 1] == "0"
    assert vulkan is not None and vulkan.status.value == "mislabelled"
    assert vulkan.error is not None and "backends 'CPU'" in vulkan.error
    assert vulkan.backend_check is not None and vulkan.backend_check.devices == ["CPU"]

    report = orch("--store", str(store_path), "report", "labels", "--format", "csv")
    assert report.returncode == 0, report.stderr
    [vulkan_line] = [line for line in report.stdout.splitlines() if ",vulkan," in line]
    assert ",mislabelled," in vulkan_line


def test_a_declared_carve_out_on_a_box_without_an_apu_stops_the_worker(
    tmp_path: Path, broker: str
) -> None:
    config = tmp_path / "worker.yaml"
    config.write_text(
        yaml.safe_dump(
            {"host": "plain-box", "declared": {"vram_split": "32G"}, "facts_root": str(NO_GPU)}
        )
    )
    done = orch("worker", "--config", str(config), "--broker", broker, timeout=120)
    assert done.returncode == 2
    assert f"{config}: refusing to consume orch.plain-box.vram-32G" in done.stderr
    assert "no integrated AMD GPU (APU) that could have a BIOS carve-out" in done.stderr
    assert "Traceback" not in done.stderr
