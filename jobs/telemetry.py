"""What the telemetry sampler reports for a run: per-phase summaries, energy, a chart series.

Metric names carry their unit: `gpu_busy_pct`, `vram_used_bytes`, `gtt_used_bytes`, `power_w`,
`gpu_temp_c`, `engine_gfx_busy_pct`, `engine_compute_busy_pct`, `engine_dma_busy_pct` (the copy
engine), `drm_vram_bytes`, `drm_gtt_bytes`, `package_power_w` (RAPL), `cpu_pct` (the engine's
process tree, % of one core), `rss_bytes`, `sys_ram_used_bytes`, `swap_used_bytes`.

Windows (PDH, worker/telemetry/pdh_gpu.py) and macOS (worker/telemetry/macos_gpu.py) fill the
same names where the quantity is the same (GPU busy, dedicated memory as `vram_used_bytes`,
shared GPU memory / Apple unified memory in use by the GPU as `gtt_used_bytes`, the engine's
copy engine as `engine_dma_busy_pct`) and add: `gpu_3d_busy_pct`, `gpu_copy_busy_pct` (the
adapter's copy engine, what Task Manager draws), `gpu_compute_busy_pct`,
`gpu_videodecode_busy_pct` (adapter-wide per engine type), `gpu_renderer_busy_pct`,
`gpu_tiler_busy_pct` (Apple), `gpu_power_w`, `cpu_power_w`, `ane_power_w` (powermetrics).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Phase = Literal["prefill", "decode", "run"]


class PhaseWindow(BaseModel):
    """A stretch of the run an engine knows the meaning of (seconds since sampling started)."""

    model_config = ConfigDict(extra="forbid")

    phase: Phase
    start_s: float
    end_s: float
    tokens: int = 0  # tokens processed in the window (prompt tokens for prefill, generated ...)


class MetricSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mean: float | None = None
    peak: float | None = None
    baseline: float | None = None  # last sample before the run started (memory: peak - baseline)
    samples: int = 0


class PhaseSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phase: Phase
    start_s: float
    end_s: float
    tokens: int = 0
    metrics: dict[str, MetricSummary] = Field(default_factory=dict)
    energy_j: float | None = None  # integrated power over the window, when a power source exists
    j_per_token: float | None = None
    tokens_per_s_per_w: float | None = None


class SourceStatus(BaseModel):
    """Whether a telemetry source could be read on this box, and what it measured."""

    model_config = ConfigDict(extra="forbid")

    name: str  # "amdgpu", "drm_fdinfo", "rapl", "nvml", "psutil"
    available: bool
    detail: str | None = None  # device read, or why the source is absent
    power_includes_cpu: bool | None = None  # APU package power covers CPU and GPU


class Telemetry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval_s: float
    samples: int
    sources: list[SourceStatus] = Field(default_factory=list)
    phases: list[PhaseSummary] = Field(default_factory=list)
    # Downsampled series for charts: "t_s" plus one list per metric, same length, None = gap.
    series: dict[str, list[float | None]] = Field(default_factory=dict)
    # The power metric integrated into each phase's energy_j: "power_w" (GPU board, or APU
    # package per SourceStatus.power_includes_cpu) before "package_power_w" (RAPL); None = no
    # power source.
    energy_metric: str | None = None
    sampler_cpu_s: float = 0.0  # CPU time the sampler itself used
    sampler_cpu_pct: float = 0.0  # of one core, over the sampled duration
