"""Memory-fit planner: will a job's model and context fit a host's GPU memory, before it runs?

It takes a GGUF file's shape (`jobs.modelshape`: read on the coordinator, or reported by the
worker that has the file), estimates what llama.cpp will allocate for one context (`estimate`:
weights, KV cache, compute buffer) and compares that with a host's detected facts (`verdict`).
Example::

    shape = read_model_shape(Path("models/glm-4.7-flash-q4_k_m.gguf"))
    need = estimate(shape, context=32768, cache_type_k="q8_0", cache_type_v="q8_0")
    verdict(need, facts).text()  # -> "fits (needs 19.9 GB, has 32.0 GB GPU)"

The KV and weight terms follow llama.cpp's own allocation rules and match its logged buffer sizes
exactly on the tiny models (tests/integration/test_planner_llamacpp.py); the compute buffer is a
calibrated approximation (see `compute_buffer_bytes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from jobs.facts import HostFacts
from jobs.modelshape import ModelShape
from jobs.spec import TTM_PAGE_BYTES, vram_split_bytes

# llama.cpp allocates KV cells in multiples of 256 (seen: -c 1000 logs "1024 cells").
KV_CELL_PAD = 256
# Bytes a job leaves to the OS and other processes when it lives in system RAM; llama.cpp's own
# `--fit` keeps the same 1 GiB margin ("will leave N >= 1024 MiB of system memory").
RAM_RESERVE_BYTES = 1 << 30
GB = 1e9  # reports use decimal GB, like the sizes model hubs and `ls -h --si` print

CacheType = str
VerdictKind = Literal["fits", "spills", "will not load", "unknown"]


@dataclass(frozen=True)
class MemoryEstimate:
    """What one llama.cpp instance allocates for a model at one context, in bytes."""

    weight_bytes: int
    kv_bytes: int
    compute_bytes: int
    context: int
    kv_cells: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.compute_bytes


@dataclass(frozen=True)
class Verdict:
    """Whether a job's memory need fits a host, with the numbers that decided it."""

    kind: VerdictKind
    needs_bytes: int
    gpu_bytes: int | None = None  # usable GPU memory (VRAM, plus GTT on an APU)
    vram_bytes: int | None = None
    gtt_bytes: int | None = None  # counted in gpu_bytes only on an APU
    ram_bytes: int | None = None  # system RAM usable for what spills, after the OS reserve
    pool_bytes: int | None = None  # GPU + RAM, counting an APU's GTT (part of RAM) once
    reason: str = ""

    def oom_text(self) -> str:
        """What a skipped job's result says: "predicted OOM (needs 23.1 GB, has 0.5 GB)"."""
        needs, has = size_text(self.needs_bytes), size_text(self.pool_bytes or 0)
        return f"predicted OOM (needs {needs}, has {has})"

    def text(self) -> str:
        needs = f"needs {size_text(self.needs_bytes)}"
        if self.kind == "unknown":
            return f"unknown ({needs}; {self.reason or 'no host facts'})"
        if self.kind == "will not load":
            return f"will not load: {self.oom_text()}"
        gpu = f"has {size_text(self.gpu_bytes or 0)} GPU"
        if not self.gpu_bytes and self.ram_bytes is not None:  # CPU-only: RAM is the pool
            gpu = f"has {size_text(self.ram_bytes)} RAM"
        if self.kind == "spills":
            return f"spills ({needs}, {gpu} + {size_text(self.ram_bytes or 0)} RAM)"
        return f"fits ({needs}, {gpu}{self.reason and '; ' + self.reason})"


def size_text(n_bytes: int) -> str:
    """GB from 1 GB up; MiB below (as llama.cpp logs buffers), so small needs never read 0.0."""
    return f"{n_bytes / GB:.1f} GB" if n_bytes >= GB else f"{n_bytes / 2**20:.1f} MiB"


# The KV cache types llama.cpp accepts (`-ctk`/`-ctv`): values per block and bytes per block,
# as ggml's type traits give them (gguf-py's GGML_QUANT_SIZES; a test checks this table against
# it). Kept here so that sizing a plan does not import gguf and numpy (~0.1 s a command).
CACHE_TYPE_BLOCKS: dict[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q5_1": (32, 24),
    "q5_0": (32, 22),
    "q4_1": (32, 20),
    "q4_0": (32, 18),
    "iq4_nl": (32, 18),
}


def cache_type_bytes(cache_type: CacheType, n_values: int) -> int:
    """Bytes that `n_values` cache entries take as `cache_type` (f16, q8_0, q4_0...).

    Quantized types store blocks: q8_0 packs 32 values in 34 bytes, q4_0 32 in 18, so a row's
    size is its block count times the block size.
    """
    try:
        block_values, block_bytes = CACHE_TYPE_BLOCKS[cache_type.lower()]
    except KeyError:
        raise ValueError(
            f"unknown KV cache type {cache_type!r}: use {', '.join(CACHE_TYPE_BLOCKS)}"
        ) from None
    return math.ceil(n_values / block_values) * block_bytes


def kv_cells(context: int) -> int:
    return math.ceil(context / KV_CELL_PAD) * KV_CELL_PAD


def kv_cache_bytes(shape: ModelShape, context: int, cache_type_k: str, cache_type_v: str) -> int:
    """n_layer x cells x (K row + V row); one cell's row is n_head_kv x key/value length."""
    cells = kv_cells(context)
    return sum(
        cells * cache_type_bytes(cache_type_k, n_kv * shape.key_length)
        + cells * cache_type_bytes(cache_type_v, n_kv * shape.value_length)
        for n_kv in shape.n_head_kv_per_layer
    )


def compute_buffer_bytes(
    shape: ModelShape,
    context: int,
    *,
    n_ubatch: int = 512,
    n_parallel: int = 1,
    flash_attn: bool = True,
    quantized_cache: bool = False,
) -> int:
    """Approximate llama.cpp's compute buffer: the scratch memory of one ubatch's graph.

    ggml's allocator reuses memory between graph nodes, so the buffer is the peak of live
    activations, not their sum. Calibrated on llama.cpp 0.3.36's CPU backend (tiny model,
    contexts 512-16384, ubatch 256/512, flash attention on/off; see the integration test):
    - per token, the FFN is the peak: residual + normed input (2 x n_embd) and gate, up and
      their product (3 x n_ff) in f32; for MoE, n_ff is that of the experts used per token,
      plus each used expert's n_embd output, kept until their weighted sum;
    - the attention mask, one f16 (FA) or f32 (no FA) per KV cell per token, and without flash
      attention the full f32 KQ matrix per head: this term grows with context;
    - a quantized KV cache adds one f32 K-sized row per token for the conversion;
    - the logits of one output per sequence (the server samples only the last token).
    Matches the CPU log within 0.1 MiB for the dense tiny model with FA, and within 10% for
    tiny GQA and 8-expert MoE variants (tests/integration/test_planner_llamacpp.py). Not
    covered: GPU backends' extra copies, recurrent/SSM layers, vision towers, and llama.cpp
    versions that reserve logits for a whole ubatch (then add n_vocab x n_ubatch x 4).
    """
    used = shape.expert_used_count if shape.expert_count else None
    if used:
        ff_active = (shape.expert_ff or shape.n_ff) * used
    else:
        ff_active = shape.n_ff
    # MoE: each used expert's down projection is kept until their weighted sum.
    expert_out = shape.n_embd * used if used else 0
    per_token = 4 * (2 * shape.n_embd + 3 * ff_active + expert_out)
    cells = kv_cells(context)
    per_cell = 2 if flash_attn else 4 + 4 * shape.n_head
    quant_rows = 4 * shape.n_head_kv * shape.key_length if quantized_cache else 0
    logits = 4 * shape.n_vocab * n_parallel
    return n_ubatch * (per_token + cells * per_cell + quant_rows) + logits


def estimate(
    shape: ModelShape,
    context: int,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    n_ubatch: int = 512,
    n_parallel: int = 1,
    flash_attn: bool = True,
) -> MemoryEstimate:
    """What llama.cpp will allocate for `shape` at `context` (-c: total cells, all slots)."""
    if context <= 0:
        raise ValueError(f"context must be positive, not {context}")
    quantized = any(t.lower() not in ("f16", "bf16", "f32") for t in (cache_type_k, cache_type_v))
    return MemoryEstimate(
        weight_bytes=shape.weight_bytes,
        kv_bytes=kv_cache_bytes(shape, context, cache_type_k, cache_type_v),
        compute_bytes=compute_buffer_bytes(
            shape,
            context,
            n_ubatch=min(n_ubatch, kv_cells(context)),
            n_parallel=n_parallel,
            flash_attn=flash_attn,
            quantized_cache=quantized,
        ),
        context=context,
        kv_cells=kv_cells(context),
    )


def facts_in_configuration(
    facts: HostFacts, configuration: dict[str, str]
) -> tuple[HostFacts, str | None]:
    """The host's facts as they will be when it runs in `configuration` (another boot setting).

    Facts are detected in the configuration the box runs in now. A job for another carve-out
    will see that carve-out as VRAM, and the OS will see RAM grow or shrink by the difference
    (the carve-out is taken from the same DIMMs). GTT follows `ttm.pages_limit` when the job's
    configuration sets it; otherwise it is kept as detected (its limit does not follow the
    carve-out). Either way it is capped at the RAM. Returns the facts and a note saying what was
    derived, None when nothing was.
    """
    update: dict[str, object] = {}
    changed = []
    wanted = configuration.get("vram_split")
    ram = facts.ram_bytes
    if wanted and facts.vram_split is not None and wanted != facts.vram_split:
        delta = vram_split_bytes(facts.vram_split) - vram_split_bytes(wanted)
        ram = None if ram is None else max(0, ram + delta)
        update["gpus"] = [
            g.model_copy(update={"vram_total_bytes": vram_split_bytes(wanted)}) if g.is_apu else g
            for g in facts.gpus
        ]
        update["vram_split"], update["ram_bytes"] = wanted, ram
        changed.append(f"{wanted} from facts detected at {facts.vram_split}")
    pages = configuration.get("ttm_pages_limit")
    gtt = facts.gtt_bytes
    if pages and str(facts.ttm_pages_limit) != pages:
        gtt = int(pages) * TTM_PAGE_BYTES
        update["ttm_pages_limit"] = int(pages)
        changed.append(f"GTT from ttm.pages_limit={pages}")
    if not changed:
        return facts, None
    update["gtt_bytes"] = gtt if ram is None or gtt is None else min(gtt, ram)
    return facts.model_copy(update=update), "derived for " + ", ".join(changed)


def _is_apu(facts: HostFacts) -> bool:
    # A carve-out only exists on an APU; detection sets vram_split only for amdgpu APUs.
    return facts.vram_split is not None or any(g.is_apu for g in facts.gpus)


def verdict(estimate: MemoryEstimate, facts: HostFacts | None) -> Verdict:
    """Fits / spills / will not load for one estimate on one host; unknown without facts.

    - GPU memory is the sum of all GPUs' VRAM (llama.cpp splits layers across GPUs). On an APU
      it also counts GTT: the iGPU maps system RAM through GTT and llama.cpp's Vulkan and ROCm
      backends allocate from it when the carve-out is full, so a 512M carve-out still runs an
      18 GB model (slower: a user measured 17 vs 43 tokens/s, docs/facts.md). The verdict
      says "via GTT" then, so a report can tell it from a carve-out fit. On a discrete GPU,
      GTT is system RAM over PCIe: that is a spill, not a fit.
    - What does not fit GPU memory spills into system RAM (layers on the CPU: runs, slowly). On
      an APU, GTT is part of that same RAM, so the total pool is VRAM + RAM, never + GTT twice.
    - Without any GPU, RAM is the only pool: a CPU-only box either fits or will not load.
    """
    needs = estimate.total_bytes
    if facts is None:
        return Verdict("unknown", needs, reason="no host facts")
    vram = sum(g.vram_total_bytes or 0 for g in facts.gpus)
    apu = _is_apu(facts)
    gtt = facts.gtt_bytes
    if gtt is None:
        gtt = sum(g.gtt_total_bytes or 0 for g in facts.gpus if g.is_apu is not False)
    ram = max(0, (facts.ram_bytes or 0) - RAM_RESERVE_BYTES) if facts.ram_bytes else None
    if not facts.gpus and ram is None:
        return Verdict("unknown", needs, reason="host facts list no GPU and no RAM size")
    gpu = vram + (gtt if apu else 0)
    # On an APU the GTT part of `gpu` is the same RAM as `ram`: count the pool once.
    pool = (vram + (ram or 0)) if apu else (gpu + (ram or 0))

    def result(kind: VerdictKind, gpu_bytes: int, pool_bytes: int | None, reason: str) -> Verdict:
        return Verdict(
            kind,
            needs,
            gpu_bytes=gpu_bytes,
            vram_bytes=vram,
            gtt_bytes=gtt if apu else None,
            ram_bytes=ram,
            pool_bytes=pool_bytes,
            reason=reason,
        )

    if not facts.gpus:
        # CPU-only: the whole job lives in RAM, which is what "GPU memory" means for it here.
        kind: VerdictKind = "fits" if ram is not None and needs <= ram else "will not load"
        return result(kind, 0, ram, "no GPU: runs on the CPU")
    if needs <= gpu:
        via_gtt = apu and needs > vram
        note = f"{size_text(vram)} VRAM + GTT" if via_gtt else ""
        return result("fits", gpu, pool, note)
    return result("spills" if needs <= pool else "will not load", gpu, pool, "")
