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
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from jobs.protocol import MAX_JOB_TIMEOUT_S
from jobs.spec import CONFIGURATION_AXES, RUNTIME_AXES, Name, VramSplit, Watts, Workload

# Axes a named configuration sets (reboot-bound and runtime alike).
HOST_SETTING_KEYS = (*CONFIGURATION_AXES, *RUNTIME_AXES)


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
    context: list[PositiveInt] = Field(min_length=1)
    vram_split: list[VramSplit] = Field(default_factory=list)
    engine: list[Name] = Field(default_factory=list)  # when empty: the top-level `engine`
    ttm_pages_limit: list[PositiveInt] = Field(default_factory=list)
    platform_profile: list[Name] = Field(default_factory=list)
    power_limit_w: list[Watts] = Field(default_factory=list)
    configuration: list[Name] = Field(default_factory=list)  # names from `configurations`


class Selector(BaseModel):
    """An `exclude`/`include` entry: the axes it names must all match (exclude) or be set."""

    model_config = ConfigDict(extra="forbid")

    host: Name | None = None
    engine: Name | None = None
    model: str | None = None
    backend: Name | None = None
    context: PositiveInt | None = None
    vram_split: VramSplit | None = None
    ttm_pages_limit: PositiveInt | None = None
    platform_profile: Name | None = None
    power_limit_w: Watts | None = None
    configuration: Name | None = None

    def named(self) -> dict[str, object]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Matrix(BaseModel):
    """A validated matrix file. Expansion into jobs lives on the coordinator side."""

    model_config = ConfigDict(extra="forbid")

    campaign: Name
    repetitions: PositiveInt = 3
    engine: Name = "llama-bench"
    workload: Workload = Workload()
    timeout_s: PositiveInt = Field(default=3600, le=MAX_JOB_TIMEOUT_S)
    hosts: list[Name] = Field(min_length=1)
    configurations: dict[Name, HostConfiguration] = Field(default_factory=dict)
    matrix: MatrixAxes
    exclude: list[Selector] = Field(default_factory=list)
    include: list[Selector] = Field(default_factory=list)
