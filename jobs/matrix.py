"""The matrix file a user submits: hosts x axes, minus exclusions, plus inclusions.

Example (`matrix.yaml`)::

    campaign: halo-vs-laptop
    repetitions: 3
    engine: llama-bench
    workload: {prompt_tokens: 64, gen_tokens: 32}
    hosts: [laptop-80w, minipc-120w]
    matrix:
      model: ["tiny:q8_0", "tiny:q4_k_m"]
      backend: [cpu]
      context: [512, 2048]
      vram_split: [32G]
    exclude:
      - {host: minipc-120w, context: 512}

Named host configurations bundle reboot-bound settings (vram_split: the job waits for the box
to run in it) and runtime ones (platform_profile, power_limit_w: the worker applies them)::

    configurations:
      quiet-512m: {vram_split: 512M, platform_profile: low-power, power_limit_w: 45}
      fast-32g: {vram_split: 32G, platform_profile: performance}
    matrix:
      configuration: [quiet-512m, fast-32g]

Contexts count tokens, with K = 1024 and M = 1024 K as model cards and LM Studio count them:
`context: [16K, 64K, 198K]` is 16384, 65536 and 202752 tokens (`1M` = 1048576; lower case and
plain numbers work too). "16KB" and "1.5K" are refused: a context is a whole number of tokens.

Several workloads, by name: the `workload` axis crosses them with everything else, and an
include adds one for a single model (an exclude may name one too)::

    workloads:
      short: {prompt_tokens: 512, gen_tokens: 128}
      long-prompt: {prompt_tokens: 8192, gen_tokens: 128}
      vision: {prompt_text: "What is in this picture?", image: cat, gen_tokens: 64}
    matrix:
      workload: [short, long-prompt]
    include:
      - {host: halo, model: qwen3-vl-32b, context: 16K, engine: lmstudio, workload: vision}

Without a `workload` axis every job runs the single top-level `workload:`, as before (a file
sets one or the other). Layers on the GPU (llama.cpp's `-ngl`, llama-bench and llama-server
only) are an axis too: `gpu_layers: [0, 20, 999]`. A `cpu` backend has no GPU to put them on,
so its jobs leave gpu_layers unset (one job instead of one per value).

Engine options are axes too, each applied by the engines that can set it per job
(jobs/engineoptions.py; a matrix asking another engine for one is refused)::

    matrix:
      flash_attention: [on, off]    # llama-bench, llama-server, lmstudio
      kv_offload: [true, false]     # the KV cache in GPU memory or in RAM (same engines)
      think: [on, off]              # a thinking model's thinking: ollama

Left out, each is the engine's default (llama.cpp's `auto` flash attention; Ollama's think
off). A `cpu` backend has no GPU for the KV cache: its jobs leave kv_offload unset.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from jobs.protocol import MAX_JOB_TIMEOUT_S
from jobs.spec import (
    CONFIGURATION_AXES,
    RUNTIME_AXES,
    Context,
    Name,
    OnOff,
    VramSplit,
    Watts,
    Workload,
)

# Axes a named configuration sets (reboot-bound and runtime alike).
HOST_SETTING_KEYS = (*CONFIGURATION_AXES, *RUNTIME_AXES)
# Engines that pass `gpu_layers` on as llama.cpp's -ngl. Ollama's `num_gpu` and LM Studio's GPU
# offload are other knobs, not wired: a matrix asking them for gpu_layers is refused.
GPU_LAYERS_ENGINES = ("llama-bench", "llama-server")
# The backend that runs no layer on a GPU: its jobs leave gpu_layers unset.
CPU_BACKEND = "cpu"


class HostConfiguration(BaseModel):
    """A named host configuration: what the box must be booted in, and what to set at runtime."""

    model_config = ConfigDict(extra="forbid")

    vram_split: VramSplit | None = None
    ttm_pages_limit: PositiveInt | None = None
    platform_profile: Name | None = None
    power_limit_w: Watts | None = None

    def named(self) -> dict[str, object]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class MatrixAxes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: list[str] = Field(min_length=1)
    backend: list[Name] = Field(default_factory=lambda: ["cpu"], min_length=1)
    context: list[Context] = Field(min_length=1)
    vram_split: list[VramSplit] = Field(default_factory=list)
    engine: list[Name] = Field(default_factory=list)  # when empty: the top-level `engine`
    ttm_pages_limit: list[PositiveInt] = Field(default_factory=list)
    platform_profile: list[Name] = Field(default_factory=list)
    power_limit_w: list[Watts] = Field(default_factory=list)
    configuration: list[Name] = Field(default_factory=list)  # names from `configurations`
    workload: list[Name] = Field(default_factory=list)  # names from `workloads`
    gpu_layers: list[NonNegativeInt] = Field(default_factory=list)
    flash_attention: list[OnOff] = Field(default_factory=list)
    kv_offload: list[bool] = Field(default_factory=list)
    think: list[OnOff] = Field(default_factory=list)


class Selector(BaseModel):
    """An `exclude`/`include` entry: the axes it names must all match (exclude) or be set."""

    model_config = ConfigDict(extra="forbid")

    host: Name | None = None
    engine: Name | None = None
    model: str | None = None
    backend: Name | None = None
    context: Context | None = None
    vram_split: VramSplit | None = None
    ttm_pages_limit: PositiveInt | None = None
    platform_profile: Name | None = None
    power_limit_w: Watts | None = None
    configuration: Name | None = None
    workload: Name | None = None
    gpu_layers: NonNegativeInt | None = None
    flash_attention: OnOff | None = None
    kv_offload: bool | None = None
    think: OnOff | None = None

    def named(self) -> dict[str, object]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Matrix(BaseModel):
    """A validated matrix file. Expansion into jobs lives on the coordinator side."""

    model_config = ConfigDict(extra="forbid")

    campaign: Name
    repetitions: PositiveInt = 3
    engine: Name = "llama-bench"
    workload: Workload = Workload()  # every job's, unless the matrix has a `workload` axis
    workloads: dict[Name, Workload] = Field(default_factory=dict)  # by name, for that axis
    timeout_s: PositiveInt = Field(default=3600, le=MAX_JOB_TIMEOUT_S)
    hosts: list[Name] = Field(min_length=1)
    configurations: dict[Name, HostConfiguration] = Field(default_factory=dict)
    matrix: MatrixAxes
    exclude: list[Selector] = Field(default_factory=list)
    include: list[Selector] = Field(default_factory=list)
