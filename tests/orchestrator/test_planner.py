"""The planner on generated GGUF headers and hand-built host facts (no llama.cpp needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import gguf
import numpy as np
import pytest

from jobs.facts import GpuFacts, HostFacts
from jobs.modelshape import ModelShape, read_model_shape
from orchestrator.planner import (
    CACHE_TYPE_BLOCKS,
    MemoryEstimate,
    cache_type_bytes,
    estimate,
    facts_in_configuration,
    kv_cache_bytes,
    verdict,
)

GIB = 1 << 30


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int | None = None,
    key_length: int | None = None,
    experts: tuple[int, int] | None = None,
) -> Path:
    writer = gguf.GGUFWriter(path, arch)
    writer.add_context_length(4096)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(4 * n_embd)
    writer.add_head_count(n_head)
    if n_head_kv is not None:
        writer.add_head_count_kv(n_head_kv)
    if key_length is not None:
        writer.add_key_length(key_length)
        writer.add_value_length(key_length)
    if experts is not None:
        writer.add_expert_count(experts[0])
        writer.add_expert_used_count(experts[1])
        writer.add_expert_feed_forward_length(n_embd)
    writer.add_token_list([f"t{i}" for i in range(100)])
    writer.add_tensor("token_embd.weight", np.zeros((100, n_embd), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_dense_shape(tmp_path: Path) -> None:
    shape = read_model_shape(write_gguf(tmp_path / "dense.gguf"))
    assert (shape.architecture, shape.n_layer, shape.n_embd, shape.n_head) == ("llama", 2, 64, 4)
    assert shape.n_head_kv == 4  # absent key: llama.cpp's default, no GQA
    assert (shape.key_length, shape.value_length) == (16, 16)
    assert shape.expert_count is None and shape.expert_used_count is None
    assert shape.context_length == 4096 and shape.n_vocab == 100
    assert shape.weight_bytes == 100 * 64 * 4 + 64 * 2
    assert shape.file_bytes == (tmp_path / "dense.gguf").stat().st_size > shape.weight_bytes


def test_gqa_and_moe_shapes(tmp_path: Path) -> None:
    gqa = read_model_shape(write_gguf(tmp_path / "gqa.gguf", n_head=8, n_head_kv=2, key_length=128))
    assert (gqa.n_head, gqa.n_head_kv, gqa.key_length, gqa.value_length) == (8, 2, 128, 128)
    moe = read_model_shape(write_gguf(tmp_path / "moe.gguf", arch="qwen3moe", experts=(64, 4)))
    assert (moe.architecture, moe.expert_count, moe.expert_used_count) == ("qwen3moe", 64, 4)
    assert moe.expert_ff == 64


def shape_of(**overrides: object) -> ModelShape:
    base: dict[str, object] = dict(
        architecture="llama", n_layer=32, n_embd=4096, n_head=32,
        n_head_kv_per_layer=(8,) * 32, key_length=128, value_length=128, n_ff=14336,
        n_vocab=128256, context_length=131072, expert_count=None, expert_used_count=None,
        expert_ff=None, weight_bytes=4_920_000_000, file_bytes=4_920_100_000,
    )  # fmt: skip
    return ModelShape(**{**base, **overrides})  # type: ignore[arg-type]


def test_kv_formula_exact() -> None:
    shape = shape_of()  # a Llama-3-8B-like GQA shape: 32 layers, 8 KV heads of 128
    assert kv_cache_bytes(shape, 8192, "f16", "f16") == 32 * 8192 * (8 * 128 * 2) * 2
    assert kv_cache_bytes(shape, 8192, "f16", "f16") == 1 * GIB
    # Cells come in multiples of 256, as llama.cpp allocates them.
    assert kv_cache_bytes(shape, 1000, "f16", "f16") == kv_cache_bytes(shape, 1024, "f16", "f16")


def test_cache_types() -> None:
    assert cache_type_bytes("f16", 1024) == 2048
    assert cache_type_bytes("f32", 1024) == 4096
    assert cache_type_bytes("q8_0", 1024) == 32 * 34
    assert cache_type_bytes("Q4_0", 1024) == 32 * 18
    shape = shape_of()
    f16 = kv_cache_bytes(shape, 4096, "f16", "f16")
    assert kv_cache_bytes(shape, 4096, "q8_0", "q8_0") == f16 * 34 // 64
    assert kv_cache_bytes(shape, 4096, "q8_0", "q4_0") == f16 * 34 // 128 + f16 * 18 // 128
    with pytest.raises(ValueError, match="unknown KV cache type 'q3'"):
        cache_type_bytes("q3", 32)


def test_cache_type_table_agrees_with_ggmls() -> None:
    """orch's table of KV cache types is ggml's own (gguf-py's GGML_QUANT_SIZES)."""
    for name, sizes in CACHE_TYPE_BLOCKS.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]] == sizes, name


def test_estimate_totals_and_moe_compute() -> None:
    need = estimate(shape_of(), 8192)
    assert need.total_bytes == need.weight_bytes + need.kv_bytes + need.compute_bytes
    assert need.kv_bytes == GIB and 0 < need.compute_bytes < need.kv_bytes
    longer = estimate(shape_of(), 32768)
    assert longer.compute_bytes > need.compute_bytes  # the attention mask grows with context
    no_fa = estimate(shape_of(), 8192, flash_attn=False)
    assert no_fa.compute_bytes > need.compute_bytes
    moe = shape_of(expert_count=128, expert_used_count=8, expert_ff=768)
    # per token: the 8 used experts' FFN (3 x 8 x 768) and their outputs (8 x 4096) instead of
    # the dense 3 x 14336: 59392 vs 51200 floats
    per_token_delta = 4 * ((3 * 8 * 768 + 8 * 4096) - 3 * 14336)
    assert estimate(moe, 8192).compute_bytes - need.compute_bytes == 512 * per_token_delta
    with pytest.raises(ValueError):
        estimate(shape_of(), 0)


def strix_halo(carve_out: str) -> HostFacts:
    """A 128 GB Ryzen AI Max+ 395: MemTotal and GTT shrink as the carve-out grows."""
    vram = {"512M": 512 << 20, "32G": 32 * GIB}[carve_out]
    ram = 128 * GIB - vram
    gtt = ram // 2  # the amdgpu default: half of system RAM
    gpu = GpuFacts(name="Radeon 8060S", driver="amdgpu", vram_total_bytes=vram,
                   gtt_total_bytes=gtt, is_apu=True)  # fmt: skip
    return HostFacts(
        ram_bytes=ram, gpus=[gpu], vram_split=carve_out, gtt_bytes=gtt,
        detected_at=datetime(2025, 1, 1, tzinfo=UTC),
    )  # fmt: skip


def need(total_gb: float) -> MemoryEstimate:
    return MemoryEstimate(int(total_gb * 1e9), 0, 0, context=4096, kv_cells=4096)


def test_strix_halo_512m_vs_32g() -> None:
    small, big = strix_halo("512M"), strix_halo("32G")
    glm = need(18.1)  # GLM-4.7-Flash Q4_K_M, the case in docs/facts.md
    at_32g = verdict(glm, big)
    # 32 GiB carve-out + 48 GiB GTT (half of the remaining 96 GiB RAM).
    assert at_32g.kind == "fits" and at_32g.text() == "fits (needs 18.1 GB, has 85.9 GB GPU)"
    at_512m = verdict(glm, small)
    # Fits only through GTT: said so, because it runs much slower (17 vs 43 tokens/s).
    assert at_512m.kind == "fits" and "512.0 MiB VRAM + GTT" in at_512m.text()
    # Beyond GTT but within RAM: spills.
    spill = verdict(need(80.0), small)
    assert spill.kind == "spills" and spill.text().startswith("spills (needs 80.0 GB")
    assert verdict(need(80.0), big).kind == "fits"  # 32G carve-out + 48 GiB GTT
    assert verdict(need(90.0), big).kind == "spills"
    # Beyond everything: will not load, with the pool counted once (GTT is part of RAM).
    oom = verdict(need(140.0), small)
    assert oom.kind == "will not load"
    assert oom.pool_bytes == (512 << 20) + (128 * GIB - (512 << 20)) - GIB  # RAM less 1 GiB
    assert oom.text() == "will not load: predicted OOM (needs 140.0 GB, has 136.4 GB)"
    assert oom.oom_text() == "predicted OOM (needs 140.0 GB, has 136.4 GB)"


def test_discrete_gpu_and_cpu_only() -> None:
    stamp = datetime(2025, 1, 1, tzinfo=UTC)
    dgpu = HostFacts(ram_bytes=64 * GIB, detected_at=stamp, gpus=[
        GpuFacts(name="RX 7900", vram_total_bytes=24 * GIB, gtt_total_bytes=32 * GIB, is_apu=False)
    ])  # fmt: skip
    assert verdict(need(20.0), dgpu).kind == "fits"
    # GTT on a discrete card is RAM over PCIe: a spill, not a fit.
    assert verdict(need(30.0), dgpu).kind == "spills"
    assert verdict(need(100.0), dgpu).kind == "will not load"
    cpu = HostFacts(ram_bytes=16 * GIB, detected_at=stamp)
    assert verdict(need(8.0), cpu).kind == "fits"
    assert verdict(need(17.0), cpu).kind == "will not load"


def test_unknown_without_facts() -> None:
    result = verdict(need(1.2), None)
    assert result.kind == "unknown" and result.text() == "unknown (needs 1.2 GB; no host facts)"
    empty = HostFacts(detected_at=datetime(2025, 1, 1, tzinfo=UTC))
    assert verdict(need(1.2), empty).kind == "unknown"


def test_facts_are_derived_for_a_carve_out_the_box_is_not_in_now() -> None:
    now = strix_halo("512M")
    derived, note = facts_in_configuration(now, {"vram_split": "32G"})
    assert note == "derived for 32G from facts detected at 512M"
    assert derived.vram_split == "32G"
    assert derived.gpus[0].vram_total_bytes == 32 * GIB
    assert derived.ram_bytes == strix_halo("32G").ram_bytes  # the carve-out comes out of RAM
    assert derived.gtt_bytes == now.gtt_bytes  # the GTT limit does not follow the carve-out
    # a 30 GB model fits the 32G carve-out itself, and only through GTT at 512M
    model = need(30)
    assert verdict(model, derived).kind == "fits" and verdict(model, derived).reason == ""
    assert "VRAM + GTT" in verdict(model, now).reason
    assert facts_in_configuration(now, {"vram_split": "512M"}) == (now, None)
    assert facts_in_configuration(now, {}) == (now, None)


def test_a_ttm_pages_limit_configuration_sets_the_gtt_pool() -> None:
    now = strix_halo("512M")  # GTT: half of RAM, about 68 GB
    derived, note = facts_in_configuration(
        now, {"vram_split": "512M", "ttm_pages_limit": "27648000"}
    )
    assert note == "derived for GTT from ttm.pages_limit=27648000"
    assert derived.gtt_bytes == 27648000 * 4096 and derived.ttm_pages_limit == 27648000
    model = need(100)  # 100 GB: only through a raised GTT limit
    assert verdict(model, now).kind == "spills"
    assert verdict(model, derived).kind == "fits"
