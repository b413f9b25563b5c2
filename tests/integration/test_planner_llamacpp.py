"""The planner against real llama.cpp: its estimate vs the buffer sizes llama-server logs.

llama-server is started with `-v` (buffer sizes are logged at verbose level), `-fit off` (else
the log holds a dry-run pass too) and `--no-repack` (the CPU backend otherwise keeps a second,
repacked copy of Q4_K weights, which a GPU backend never makes).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from jobs.modelshape import read_model_shape
from orchestrator.planner import estimate
from worker.engines.server_process import ServerProcess, free_port
from worker.provision.tiny_model import TinyShape, write_tiny_variant

pytestmark = pytest.mark.integration

MIB = 1 << 20
_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute) buffer size =\s+([\d.]+) MiB")


def logged_buffers(llama_bin: Path, model: Path, context: int) -> dict[str, float]:
    """Run llama-server until it is healthy; return MiB per buffer kind, summed over devices."""
    argv = [
        str(llama_bin / "llama-server"), "-m", str(model), "-c", str(context), "-np", "1",
        "--host", "127.0.0.1", "--port", str(free_port()), "-t", "1",
        "-v", "-fit", "off", "--no-repack",
    ]  # fmt: skip
    server = ServerProcess(argv)
    server.start()
    try:
        assert server.wait_ready(60), server.log_tail()
        # llama.cpp writes its log from a thread of its own: /health can answer before the
        # buffer lines reach the file. "model loaded" is logged after all of them.
        deadline = time.monotonic() + 60
        while "model loaded" not in (log := server.log_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.stop()
    sizes: dict[str, float] = {}
    for _device, kind, mib in _BUFFER.findall(log):
        sizes[kind] = sizes.get(kind, 0.0) + float(mib)
    assert {"model", "KV", "compute"} <= sizes.keys(), log[-3000:]
    return sizes


@pytest.mark.parametrize("context", [512, 1000, 4096])
@pytest.mark.parametrize("name", ["tiny:q8_0", "tiny:q4_k_m"])
def test_estimate_matches_llama_cpp_log(
    llama_bin: Path, tiny_models: dict[str, Path], name: str, context: int
) -> None:
    logged = logged_buffers(llama_bin, tiny_models[name], context)
    planned = estimate(read_model_shape(tiny_models[name]), context)
    planned_mib = (planned.weight_bytes + planned.kv_bytes) / MIB
    logged_mib = logged["model"] + logged["KV"]
    # The log rounds to 0.01 MiB; the bar is 10%, the estimate is far closer.
    assert planned_mib == pytest.approx(logged_mib, rel=0.10)
    assert planned.kv_bytes / MIB == pytest.approx(logged["KV"], abs=0.01)
    assert planned.weight_bytes / MIB == pytest.approx(logged["model"], abs=0.01)
    # The compute buffer is an approximation calibrated on this backend: hold it to 10% too.
    assert planned.compute_bytes / MIB == pytest.approx(logged["compute"], rel=0.10)
    print(
        f"{name} -c {context}: weights+KV planned {planned_mib:.3f} MiB, logged "
        f"{logged_mib:.2f} MiB; compute planned {planned.compute_bytes / MIB:.3f} MiB, "
        f"logged {logged['compute']:.2f} MiB"
    )


@pytest.mark.parametrize("context", [512, 4096])
@pytest.mark.parametrize(
    "shape",
    [TinyShape(n_head_kv=1), TinyShape(n_head_kv=2, n_expert=8, n_expert_used=2)],
    ids=["gqa-4q-1kv", "moe-8x2-gqa"],
)
def test_estimate_matches_llama_cpp_log_for_gqa_and_moe(
    llama_bin: Path, tmp_path: Path, shape: TinyShape, context: int
) -> None:
    """The metadata shapes the issue names besides dense llama: grouped-query attention (KV
    heads < query heads: a smaller KV cache) and a mixture of experts (all experts' weights
    are loaded; only the used ones' activations count in the compute buffer)."""
    model = write_tiny_variant(tmp_path / "variant.gguf", shape)
    logged = logged_buffers(llama_bin, model, context)
    parsed = read_model_shape(model)
    assert parsed.n_head_kv == shape.n_head_kv
    assert parsed.expert_count == (shape.n_expert or None)
    planned = estimate(parsed, context)
    assert planned.kv_bytes / MIB == pytest.approx(logged["KV"], abs=0.01)
    assert planned.weight_bytes / MIB == pytest.approx(logged["model"], abs=0.01)
    assert planned.compute_bytes / MIB == pytest.approx(logged["compute"], rel=0.10)
