"""The backend rule (jobs/backends.py) over llama.cpp's own reports.

The fixtures in tests/fixtures/llama.cpp follow llama.cpp's source (README there names the
files and the commit); the CPU cases come from the real CPU build in the engine tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jobs.backends import (
    ALL_GPU_LAYERS,
    LOG_HEAD_CHARS,
    check_backend,
    check_llama_bench_row,
    check_llama_log,
    family,
    gpu_layers_for,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "llama.cpp"


def _row(name: str, **update: Any) -> dict[str, Any]:
    row: dict[str, Any] = json.loads((FIXTURES / name).read_text())[0]
    return {**row, **update}


def _log(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.mark.parametrize(
    ("device", "name"),
    [("Vulkan0 (Radeon 8060S Graphics (RADV GFX1151))", "Vulkan"), ("ROCm1", "ROCm"),
     ("CUDA0 (NVIDIA H100)", "CUDA"), ("MTL0", "MTL"), ("CPU", "CPU"), ("Vulkan", "Vulkan")],
)  # fmt: skip
def test_family_is_the_registry_name_without_the_index(device: str, name: str) -> None:
    assert family(device) == name


def test_gpu_layers_are_explicit_for_every_label() -> None:
    assert gpu_layers_for("cpu", None) == 0
    assert gpu_layers_for("vulkan", None) == ALL_GPU_LAYERS
    assert gpu_layers_for("tpu-of-the-future", None) == ALL_GPU_LAYERS
    assert gpu_layers_for("rocm", 12) == 12
    assert gpu_layers_for("cpu", 4) == 4  # the matrix said so: the check will tell


@pytest.mark.parametrize(
    ("fixture", "label", "verdict"),
    [
        ("llama-bench-vulkan.json", "vulkan", "match"),
        ("llama-bench-vulkan.json", "rocm", "mismatch"),  # a Vulkan build behind `rocm:`
        ("llama-bench-vulkan.json", "cpu", "mismatch"),  # -ngl 999 on a GPU: not a cpu run
        ("llama-bench-rocm.json", "rocm", "match"),
        ("llama-bench-rocm.json", "hip", "match"),
        ("llama-bench-rocm.json", "vulkan", "mismatch"),
        ("llama-bench-cuda-blas.json", "cuda", "match"),
        ("llama-bench-vulkan-no-device.json", "vulkan", "mismatch"),  # no Vulkan GPU found
        ("llama-bench-vulkan-no-device.json", "cpu", "match"),
        ("llama-bench-vulkan.json", "npu-x", "unverified"),
    ],
)
def test_llama_bench_rows(fixture: str, label: str, verdict: str) -> None:
    check = check_llama_bench_row(label, _row(fixture))
    assert check.verdict == verdict, check.detail
    assert check.label == label
    assert check.gpu_layers_requested == 999
    assert "llama-bench json: backends" in check.source  # the evidence is quoted


def test_a_cpu_job_on_a_gpu_build_is_cpu_only_with_dev_none() -> None:
    # -ngl 0 alone keeps the layers on the CPU, but llama.cpp still offloads large prompt
    # batches to a GPU it may use: a cpu pp would be a GPU figure. orch passes -dev none.
    in_reach = check_llama_bench_row("cpu", _row("llama-bench-vulkan.json", n_gpu_layers=0))
    assert in_reach.verdict == "mismatch"
    assert "Radeon 8060S" in in_reach.detail  # the GPU that was in reach is named
    none = _row("llama-bench-vulkan.json", n_gpu_layers=0, devices="none")
    check = check_llama_bench_row("cpu", none)
    assert check.verdict == "match" and check.gpu_layers_offloaded == 0


def test_a_gpu_label_with_zero_layers_is_a_mismatch_unless_the_matrix_asked_for_it() -> None:
    row = _row("llama-bench-vulkan.json", n_gpu_layers=0)
    assert check_llama_bench_row("vulkan", row).verdict == "mismatch"
    asked = check_llama_bench_row("vulkan", row, gpu_layers_asked=0)
    assert asked.verdict == "match" and "gpu_layers 0" in asked.detail


def test_a_cpu_build_labelled_vulkan_quotes_what_llama_bench_said() -> None:
    row = _row("llama-bench-vulkan-no-device.json", backends="CPU")
    check = check_llama_bench_row("vulkan", row)
    assert check.verdict == "mismatch"
    assert check.devices == ["CPU"]
    assert "only the CPU" in check.detail and "backends 'CPU'" in check.source


def test_a_blas_only_build_is_a_cpu_build() -> None:
    row = _row("llama-bench-vulkan-no-device.json", backends="BLAS")
    assert check_llama_bench_row("cuda", row).verdict == "mismatch"
    assert check_llama_bench_row("cpu", row).verdict == "match"


@pytest.mark.parametrize(
    ("row", "verdict"),
    [({}, "unverified"), ({"backends": 5, "gpu_info": None, "n_gpu_layers": "x"}, "mismatch")],
)
def test_rows_without_the_fields_do_not_crash(row: dict[str, Any], verdict: str) -> None:
    assert check_llama_bench_row("vulkan", row).verdict == verdict


def test_server_log_on_vulkan() -> None:
    check = check_llama_log("vulkan", _log("llama-server-vulkan.log"), gpu_layers_requested=999)
    assert check.verdict == "match", check.detail
    assert check.devices == ["Vulkan0 (Radeon 8060S Graphics (RADV GFX1151))"]
    assert (check.gpu_layers_offloaded, check.layers_total) == (48, 48)
    assert "offloaded 48/48 layers to GPU" in check.source
    assert check_llama_log("rocm", _log("llama-server-vulkan.log"),
                           gpu_layers_requested=999).verdict == "mismatch"  # fmt: skip
    assert check_llama_log("cpu", _log("llama-server-vulkan.log"),
                           gpu_layers_requested=999).verdict == "mismatch"  # fmt: skip


def test_server_log_of_a_partial_rocm_offload_is_rocm() -> None:
    check = check_llama_log("rocm", _log("llama-server-rocm-partial.log"), gpu_layers_requested=20)
    assert check.verdict == "match"
    assert check.devices == ["ROCm0 (AMD Radeon Graphics)"]
    assert (check.gpu_layers_offloaded, check.layers_total) == (20, 48)
    assert "offloaded 20/48" in check.detail


def test_server_log_with_zero_layers_offloaded() -> None:
    log = _log("llama-server-vulkan-ngl0.log")
    # a Vulkan device in use (no -dev none): a cpu job's prompt batches could run there
    assert check_llama_log("cpu", log, gpu_layers_requested=0).verdict == "mismatch"
    assert check_llama_log("vulkan", log, gpu_layers_requested=0).verdict == "mismatch"
    assert (
        check_llama_log("vulkan", log, gpu_layers_requested=0, gpu_layers_asked=0).verdict
        == "match"
    )


def test_a_log_without_devices_is_a_cpu_run() -> None:
    log = "main: loading model\nload_tensors:   CPU_Mapped model buffer size =     1.00 MiB\n"
    check = check_llama_log("vulkan", log, gpu_layers_requested=999)
    assert check.verdict == "mismatch"
    assert check.devices == ["CPU"] and check.gpu_layers_offloaded == 0


def test_only_the_head_of_a_huge_log_is_read() -> None:
    log = "x" * (LOG_HEAD_CHARS + 10) + "\n" + _log("llama-server-vulkan.log")
    check = check_llama_log("vulkan", log, gpu_layers_requested=999)
    assert check.devices == [] and check.verdict == "unverified"  # nothing past the head read


def test_ollama_style_evidence_vram_only() -> None:
    on_gpu = check_backend("rocm", [], None, vram_bytes=5_137_025_024, source="ollama /api/ps")
    assert on_gpu.verdict == "unverified"  # on a GPU, but Ollama does not say which backend
    assert check_backend("rocm", [], None, vram_bytes=0).verdict == "mismatch"
    assert check_backend("cpu", [], None, vram_bytes=0).verdict == "match"
    assert check_backend("cpu", [], None, vram_bytes=1024).verdict == "mismatch"
    assert check_backend("rocm", [], None, vram_bytes=0, gpu_layers_asked=0).verdict == (
        "unverified"
    )


def test_no_evidence_at_all_is_unverified() -> None:
    assert check_backend("vulkan", [], None).verdict == "unverified"
    assert check_backend("cpu", [], None).verdict == "unverified"


def test_a_log_without_the_loader_lines_proves_nothing() -> None:
    check = check_llama_log("vulkan", "main: loading model\nmain: model loaded\n",
                            gpu_layers_requested=999)  # fmt: skip
    assert check.verdict == "unverified"
    assert check.devices == [] and check.gpu_layers_offloaded is None
