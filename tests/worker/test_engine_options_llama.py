"""flash_attention and kv_offload on llama.cpp's own programs: the flags each takes (from
tools/llama-bench/llama-bench.cpp and common/arg.cpp of the vendored llama.cpp), what each
reports back, and a report that disagrees with the job failing it. The real build runs where
it exists (skipped otherwise, by the llama_bin fixture)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.result import Status
from jobs.spec import JobSpec, Workload
from worker.engines import RunTarget, close_engines, get_engine
from worker.engines.llama_bench import LlamaBench
from worker.engines.llama_bench import ran_options as bench_options
from worker.engines.llama_server import LlamaServer
from worker.engines.llama_server import ran_options as log_options

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "llama.cpp"


@pytest.fixture(autouse=True)
def _stop_warm_servers() -> Iterator[None]:
    yield
    close_engines()


def _job(engine: str, **options: object) -> JobSpec:
    return JobSpec(campaign="t", host="box", engine=engine, model="tiny:q8_0", backend="cpu",
                   context=256, workload=Workload(prompt_tokens=32, gen_tokens=16),
                   repetitions=1, **options)  # type: ignore[arg-type]  # fmt: skip


def test_the_flags_follow_each_programs_own_syntax() -> None:
    target = RunTarget(Path("/bin/llama-bench"), Path("/m.gguf"), 60)
    argv = LlamaBench.argv(_job("llama-bench", flash_attention="on", kv_offload=False), target)
    assert argv[argv.index("-fa") + 1] == "1" and argv[argv.index("-nkvo") + 1] == "1"
    assert "-fa" not in LlamaBench.argv(_job("llama-bench"), target)  # unset: llama.cpp's auto
    server = LlamaServer().argv(_job("llama-server", flash_attention="off", kv_offload=True),
                                target, 8080)  # fmt: skip
    assert server[server.index("-fa") + 1] == "off" and "-kvo" in server


def test_what_llama_bench_and_the_load_log_report_is_read() -> None:
    row = json.loads((FIXTURES / "llama-bench-rocm.json").read_text())[0]
    assert bench_options(row) == {"flash_attention": "auto", "kv_offload": True}
    assert bench_options({**row, "flash_attn": 1, "no_kv_offload": True}) == {
        "flash_attention": "on", "kv_offload": False,
    }  # fmt: skip
    assert bench_options({"flash_attn": False}) == {"flash_attention": "off", "kv_offload": None}
    log = (FIXTURES / "llama-server-vulkan.log").read_text()
    read = log_options(log)
    said = "llama_context: flash_attn            = enabled\n"
    assert log_options(said)["flash_attention"] == "on"
    kv = "llama_kv_cache:    Vulkan0 KV buffer size =    16.00 MiB\n"
    assert log_options(kv)["kv_offload"] is True
    cpu_kv = "using device Vulkan0 (Radeon) - 100 MiB free\n"
    cpu_kv += "llama_kv_cache:        CPU KV buffer size = 1.00 MiB\n"
    assert log_options(cpu_kv)["kv_offload"] is False
    # a CPU-only log: nowhere else to put the KV cache, so it says nothing about the option
    assert (
        log_options("llama_kv_cache:        CPU KV buffer size = 1.00 MiB\n")["kv_offload"] is None
    )
    assert set(read) == {"flash_attention", "kv_offload"}


@pytest.mark.parametrize("engine", ["llama-bench", "llama-server"])
@pytest.mark.parametrize("flash", ["on", "off"])
def test_real_llama_cpp_runs_with_the_jobs_flash_attention_and_says_so(
    llama_bin: Path, tiny_models: dict[str, Path], engine: str, flash: str
) -> None:
    out = get_engine(engine).run(
        _job(engine, flash_attention=flash),
        RunTarget(llama_bin / engine, tiny_models["tiny:q8_0"], 300, 1),
    )
    assert out.status is Status.OK, out.error
    assert out.engine.details["engine_options"]["flash_attention"] == flash
    if engine == "llama-bench":
        assert out.engine.details["flash_attn"] == (1 if flash == "on" else 0)


def test_a_llama_bench_report_that_disagrees_fails_the_job(tmp_path: Path) -> None:
    """A llama-bench that ignores -fa (prints auto): the job fails, naming what it printed."""
    row = json.loads((FIXTURES / "llama-bench-rocm.json").read_text())
    fake = tmp_path / "llama-bench"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(row)}\nEOF\n")
    fake.chmod(0o755)
    job = _job("llama-bench", flash_attention="on").model_copy(update={"backend": "rocm"})
    out = get_engine("llama-bench").run(job, RunTarget(fake, tmp_path / "m.gguf", 60))
    assert out.status is Status.ERROR
    assert out.error == (
        "llama-bench ran with flash_attention auto, not the job's on (llama-bench json: "
        "flash_attn -1, no_kv_offload False)"
    )
    assert out.measurements == []
