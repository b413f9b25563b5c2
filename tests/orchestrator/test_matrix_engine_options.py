"""Engine options as matrix axes (flash_attention, kv_offload, think): expansion, the cpu
rule, and refusals at file:line for engines that cannot apply them (jobs/engineoptions.py)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.matrixfile import load_matrix_file
from tests.orchestrator.test_matrixfile import _problems, _write

OPTIONS = """\
campaign: fa
hosts: [halo]
workload: {prompt_tokens: 64, gen_tokens: 32}
matrix:
  model: [m]
  context: [512]
  backend: [cpu, vulkan]
  flash_attention: [on, off]
  kv_offload: [true, false]
"""


def test_the_axes_cross_and_cpu_leaves_kv_offload_unset(tmp_path: Path) -> None:
    jobs = load_matrix_file(_write(tmp_path, OPTIONS)).jobs
    assert [(j.backend, j.flash_attention, j.kv_offload) for j in jobs] == [
        ("cpu", "on", None), ("cpu", "off", None),
        ("vulkan", "on", True), ("vulkan", "on", False),
        ("vulkan", "off", True), ("vulkan", "off", False),
    ]  # fmt: skip
    assert jobs[3].axes()["flash_attention"] == "on" and jobs[3].axes()["kv_offload"] is False
    assert len({j.job_id for j in jobs}) == 6
    assert len({j.load_group() for j in jobs}) == 6  # each option pair is its own load


def test_an_engine_that_cannot_set_an_option_is_refused_where_the_file_asks(
    tmp_path: Path,
) -> None:
    text = OPTIONS.replace(
        "  backend: [cpu, vulkan]\n", "  backend: [vulkan]\n  engine: [ollama]\n"
    )
    path = _write(tmp_path, text.replace("  kv_offload: [true, false]\n", ""))
    problems = _problems(path)
    assert len(problems) == 2
    for i, value in enumerate(["on", "off"]):
        assert problems[i].startswith(f"{path}:9: matrix.flash_attention[{i}]: ollama cannot set")
        assert "OLLAMA_FLASH_ATTENTION" in problems[i]
        assert f"exclude {{engine: ollama, flash_attention: {value}}}" in problems[i]


def test_think_is_an_ollama_axis_and_refused_on_llama_bench(tmp_path: Path) -> None:
    think = "campaign: t\nhosts: [h]\nengine: ollama\nmatrix: {model: [m], context: [4K], "
    think += "backend: [rocm], think: [on, off]}\n"
    jobs = load_matrix_file(_write(tmp_path, think)).jobs
    assert [j.think for j in jobs] == ["on", "off"]
    path = _write(tmp_path, think.replace("engine: ollama", "engine: llama-bench"))
    assert all("llama-bench cannot set think per job" in p for p in _problems(path))


def test_include_entries_take_the_option_and_cpu_may_not_place_the_kv_cache(
    tmp_path: Path,
) -> None:
    text = OPTIONS + (
        "include:\n  - {host: halo, model: big, context: 512, backend: vulkan, "
        "flash_attention: off, kv_offload: false}\n"
    )
    jobs = load_matrix_file(_write(tmp_path, text)).jobs
    assert (jobs[-1].model, jobs[-1].flash_attention, jobs[-1].kv_offload) == ("big", "off", False)
    bad = (
        OPTIONS
        + "include:\n  - {host: halo, model: m, context: 1K, backend: cpu, kv_offload: true}\n"
    )
    path = _write(tmp_path, bad)
    assert _problems(path) == [
        f"{path}:11: include[0].kv_offload: backend cpu has no GPU for the KV cache: leave "
        "kv_offload out of this entry"
    ]


def test_auto_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = _write(tmp_path, OPTIONS.replace("[on, off]", "[on, auto]"))
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:8: matrix.flash_attention[1]:")
    assert "leave the axis out" in problem


LOAD = """\
campaign: ld
hosts: [halo]
engine: llama-bench
workloads:
  c4: {concurrency: 4, requests: 16, prompt_tokens: 64, gen_tokens: 16}
matrix:
  model: [m]
  context: [512]
  backend: [vulkan]
  workload: [c4]
"""


def test_a_load_workload_on_an_engine_without_a_load_client_is_refused(tmp_path: Path) -> None:
    """Only llama-server runs a load workload (worker/load/); another engine would measure one
    stream and file it under a workload that says concurrency 4."""
    from jobs.engineoptions import job_option_problem

    path = _write(tmp_path, LOAD)
    [problem] = _problems(path)
    assert problem.startswith(f"{path}:5: workloads.c4: llama-bench cannot run a load workload")
    served = load_matrix_file(_write(tmp_path, LOAD.replace("llama-bench", "llama-server"))).jobs
    assert served[0].workload.load is not None and job_option_problem(served[0]) is None
    # The worker applies the same rule to a job that reached it anyway.
    bench = served[0].model_copy(update={"engine": "llama-bench"})
    assert "llama-bench cannot run a load workload" in (job_option_problem(bench) or "")
