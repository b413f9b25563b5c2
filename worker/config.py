"""The worker's config file (`worker.yaml`): who this box is and what it may run.

Example::

    host: laptop-80w
    declared: {form_factor: laptop, power_limit_w: 80, vram_split: 32G}
    engines:
      llama-bench: {backends: {cpu: /opt/llama.cpp/bin/llama-bench}}
    models:
      "tiny:q8_0": /models/tiny-q8_0.gguf

Only the binaries and model files named here are ever run: a job from the queue picks among
them by name, it never supplies a path or a command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from string import Formatter
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from jobs.protocol import MAX_JOB_TIMEOUT_S
from jobs.spec import RUNTIME_AXES, Name, VramSplit, Watts, configuration_of, queue_name
from jobs.yamlfile import describe, parse_yaml, read_text
from worker.errors import ConfigError
from worker.reconfigure.config import ReconfigureConfig


class DeclaredFacts(BaseModel):
    """What the owner says about the box. Detection and cross-checks come later."""

    model_config = ConfigDict(extra="allow")

    form_factor: str | None = None
    power_limit_w: Watts | None = None
    vram_split: VramSplit | None = None
    ttm_pages_limit: PositiveInt | None = None  # the kernel's ttm.pages_limit (4 KiB pages)


class EngineConfig(BaseModel):
    """An engine on this box: binaries per backend, or a server someone else runs.

    Binary engines (llama-bench, llama-server) name a binary per backend and use the box's
    model files. Server engines (ollama, openai) name the running server's `url`, the backends
    it is known to run (a label: the server decides), and the models it serves under what id::

        ollama:
          url: http://127.0.0.1:11434
          backends: {rocm: null}
          models: {"glm-4.7-flash:q4_k_m": "glm-4.7-flash:q4_K_M"}

    A server that wants an API token (LM Studio 0.4 with authentication on, a proxy in front of
    Ollama or vLLM) gets it from an environment variable or a file, named here; the token itself
    is never written in worker.yaml, and orch sends it as `Authorization: Bearer` only::

        lmstudio:
          url: http://127.0.0.1:1234
          api_key_env: LM_API_TOKEN          # or api_key_file: ~/.config/orch/lmstudio.token
          backends: {vulkan: ~/.lmstudio/bin/lms, rocm: ~/.lmstudio/bin/lms}
          runtimes: {rocm: llama.cpp-linux-x86_64-amd-rocm-avx2@1.52.0}   # optional pins
    """

    model_config = ConfigDict(extra="forbid")

    backends: dict[Name, Path | None] = Field(min_length=1)
    url: str | None = Field(default=None, pattern=r"^https?://")
    models: dict[str, str] = Field(default_factory=dict)
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_key_file: Path | None = None
    # LM Studio: the runtime (`lms runtime ls`: `name` or `name@version`) a backend label runs
    # on; without a pin the worker picks the installed runtime whose name carries the label.
    runtimes: dict[Name, str] = Field(default_factory=dict)
    _api_key: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _binaries_or_server(self) -> EngineConfig:
        if self.url is None:
            missing = [b for b, path in self.backends.items() if path is None]
            if missing or self.models:
                raise ValueError(
                    "an engine without `url` runs binaries: give each backend a path and use "
                    "the top-level `models` (or set `url` for a server engine)"
                )
            if self.api_key_env or self.api_key_file or self.runtimes:
                raise ValueError("api_key_env, api_key_file and runtimes belong to server engines")
        elif not self.models:
            raise ValueError("a server engine (with `url`) needs `models`: name -> served id")
        if self.api_key_env and self.api_key_file:
            raise ValueError("give api_key_env or api_key_file, not both")
        unknown = sorted(set(self.runtimes) - set(self.backends))
        if unknown:
            raise ValueError(f"runtimes: {unknown} are not among this engine's backends")
        return self

    @property
    def api_key(self) -> str | None:
        """The bearer token (read once, kept out of dumps and reprs), or None when none is set.

        Raises ConfigError naming the variable or file, never the token."""
        if self._api_key is None and (self.api_key_env or self.api_key_file):
            self._api_key = _read_api_key(self.api_key_env, self.api_key_file)
        return self._api_key


def _read_api_key(env: str | None, file: Path | None) -> str:
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"api_key_env: {env} is not set (or is empty) for the worker")
        return value
    assert file is not None
    try:
        # A token is a line; a larger file is the wrong file (and is not read whole).
        with file.open("rb") as handle:
            raw = handle.read(4097)
    except OSError as exc:
        raise ConfigError(f"api_key_file: {file}: cannot read: {exc.strerror}") from exc
    value = raw.decode("utf-8", errors="replace").strip()
    if not value or len(raw) > 4096 or any(c.isspace() for c in value):
        raise ConfigError(f"api_key_file: {file}: expected one token on one line")
    return value


_PLACEHOLDERS = {"w", "mw", "uw"}
_SETTER_METHODS = {"platform_profile": ("sysfs",), "power_limit_w": ("hwmon", "command")}


class SetterConfig(BaseModel):
    """How this box may change one runtime setting (see worker/settings/)::

    setters:
      platform_profile: {}                     # sysfs, within platform_profile_choices
      power_limit_w: {method: hwmon, min_w: 45, max_w: 120}
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["sysfs", "hwmon", "command"] = "sysfs"
    min_w: Watts | None = None
    max_w: Watts | None = None
    # method command: the argv, with {w}, {mw} or {uw} where the value goes (never a shell).
    command: list[str] = Field(default_factory=list)
    restore_w: Watts | None = None  # method command: the value put back after a job
    card: Name | None = None  # method hwmon: the DRM card ("card1"); default the first with a cap

    @model_validator(mode="after")
    def _complete(self) -> SetterConfig:
        if self.method == "command":
            if not self.command or self.restore_w is None:
                raise ValueError("method command needs `command` (argv) and `restore_w`")
            if self.min_w is None or self.max_w is None:
                # Nothing reads the limit back: the owner's bounds are the only guard.
                raise ValueError("method command needs `min_w` and `max_w` (the allowed range)")
            for part in self.command:
                names = {field for _, field, _, _ in Formatter().parse(part) if field is not None}
                if names - _PLACEHOLDERS:
                    raise ValueError(
                        f"command part {part!r}: only {{w}}, {{mw}} and {{uw}} may be filled in"
                    )
        elif self.command or self.restore_w is not None:
            raise ValueError("`command` and `restore_w` belong to method command")
        return self


class CooldownConfig(BaseModel):
    """Wait before each job until the GPU is cool and idle (a hot laptop throttles the next run).

    The gate opens once every reading has stayed at or below its threshold for `settle_s`; it
    gives up after `timeout_s` and the job runs anyway, marked as not settled.
    """

    model_config = ConfigDict(extra="forbid")

    max_gpu_temp_c: Watts | None = None  # (a positive, finite number: °C here)
    max_power_w: Watts | None = None
    settle_s: float = Field(default=5.0, ge=0)
    # Bounded well under the broker's visibility margin (1 h above the longest job).
    timeout_s: float = Field(default=300.0, gt=0, le=1800)
    poll_s: float = Field(default=1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _has_threshold(self) -> CooldownConfig:
        if self.max_gpu_temp_c is None and self.max_power_w is None:
            raise ValueError("give max_gpu_temp_c, max_power_w or both")
        return self


class DisturbanceConfig(BaseModel):
    """When a measured run counts as disturbed by something else on the box (worker/disturbance.py
    measures it around every run; reports flag such runs and draw no faster/slower verdict)::

    disturbance: {max_other_cpu_fraction: 0.1, max_load_avg: 12, allow_throttling: false}
    disturbance: {enabled: false}      # measure nothing (a box that is always shared)

    A threshold set to null is not judged (the figure is still recorded).
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # CPU time of processes other than the worker and its engine, as a share of all cores over
    # the run: 0.1 is one core of ten busy with something else (pyperf's checks warn on less).
    max_other_cpu_fraction: float | None = Field(default=0.1, ge=0, le=1)
    # Off by default: the load average counts the engine's own threads, so a sensible limit
    # depends on the box and the engine's thread count (e.g. cores + 2).
    max_load_avg: float | None = Field(default=None, gt=0)
    # A thermal throttle event (x86 thermal_throttle counters) during the run disturbs it.
    allow_throttling: bool = False
    # Another process on the GPU during the run disturbs it: an NVIDIA compute process (NVML),
    # or a process whose DRM fdinfo busy time grew on one of `gpu_engines` (amdgpu, i915...).
    allow_other_gpu_processes: bool = False
    # DRM engines (`drm-engine-<name>` in /proc/PID/fdinfo) whose use by another process counts.
    # `compute` only by default: a desktop compositor uses `gfx` all the time and would mark
    # every run on a desktop disturbed; add `gfx` on a headless box (amdgpu: gfx, compute, dma).
    gpu_engines: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]] = Field(
        default_factory=lambda: ["compute"]
    )


class WorkerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: Name
    declared: DeclaredFacts = DeclaredFacts()
    engines: dict[Name, EngineConfig] = Field(default_factory=dict)
    models: dict[str, Path] = Field(default_factory=dict)
    # Images a vision workload may name (`workload.image`): name -> file on this box.
    images: dict[Name, Path] = Field(default_factory=dict)
    # Upper bound for any job on this box; a job's own timeout_s is capped by it.
    max_job_timeout_s: PositiveInt = Field(default=MAX_JOB_TIMEOUT_S, le=MAX_JOB_TIMEOUT_S)
    # Threads for CPU engines; None lets the engine choose.
    threads: PositiveInt | None = None
    # Refuse to run when a declared fact (vram_split, power_limit_w, platform_profile) disagrees
    # with what the box reports. Turn off only where detection is known to be wrong.
    check_declared: bool = True
    # Where /sys and /proc are read from: `/`, or e.g. `/host` in a container that mounts them.
    facts_root: Path = Path("/")
    # Telemetry sampled around every run (GPU busy, VRAM/GTT, power, CPU, RSS); 0 turns it off.
    telemetry_interval_s: float = Field(default=0.1, ge=0, le=10)
    # Runtime settings jobs may change on this box, and how (nothing else is ever changed).
    setters: dict[str, SetterConfig] = Field(default_factory=dict)
    cooldown: CooldownConfig | None = None
    # What else may use the box during a run before it counts as disturbed (on by default).
    disturbance: DisturbanceConfig = DisturbanceConfig()
    # Unattended reconfiguration (switch the BIOS carve-out or kernel limit and reboot): opt-in.
    reconfigure: ReconfigureConfig | None = None
    # Take the BIOS carve-out this box booted with as its configuration when `declared:` does
    # not name it (the one-box workflow: reboot into another carve-out, nothing to edit). On
    # by itself with `reconfigure:`; off otherwise, so a fleet box keeps its queue.
    detect_configuration: bool = False

    @model_validator(mode="after")
    def _switched_axes_not_declared(self) -> WorkerConfig:
        if self.reconfigure is not None:
            both = [a for a in self.reconfigure.axes if getattr(self.declared, a) is not None]
            if both:
                raise ValueError(
                    f"declared.{both[0]}: the agent switches it itself (reconfigure.{both[0]}), "
                    "so it is detected at each boot: remove it from `declared:`"
                )
        return self

    @model_validator(mode="after")
    def _setter_methods(self) -> WorkerConfig:
        for axis, setter in self.setters.items():
            methods = _SETTER_METHODS.get(axis)
            if methods is None:
                raise ValueError(f"setters.{axis}: not a runtime setting (known: {RUNTIME_AXES})")
            if setter.method not in methods:
                raise ValueError(
                    f"setters.{axis}: method {setter.method!r} does not set it "
                    f"(use {' or '.join(methods)})"
                )
        return self

    @property
    def configuration(self) -> dict[str, str]:
        return configuration_of(self.declared.model_dump())

    @property
    def queue(self) -> str:
        return queue_name(self.host, self.configuration)

    def declared_facts(self) -> dict[str, Any]:
        return self.declared.model_dump(exclude_none=True)

    def models_for(self, engine: str) -> list[str]:
        """Model names a job may ask `engine` for on this box."""
        ec = self.engines.get(engine)
        if ec is not None and ec.url is not None:
            return sorted(ec.models)
        return sorted(self.models)


def load_worker_config(path: Path, host: str | None = None) -> WorkerConfig:
    """Read and check worker.yaml; `host` (from --host) must agree with the file when both exist.

    Paths may start with `~`; relative paths are taken from the config file's folder, so a
    service started from another directory finds the same files.
    """

    def refuse(problems: list[str]) -> ConfigError:
        return ConfigError("\n".join(problems))

    # Bounded like a matrix file: worker.yaml may be copied from anywhere (a fleet inventory, a
    # forum post), and an alias bomb must not take the agent's memory.
    data, lines = parse_yaml(path, read_text(path, refuse), refuse)
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with host, declared, engines, models")
    if host is not None:
        if data.get("host") not in (None, host):
            raise ConfigError(
                f"{path}: host is {data['host']!r} but --host says {host!r}; make them agree"
            )
        data["host"] = host
    try:
        config = WorkerConfig.model_validate(data)
    except ValidationError as exc:
        raise refuse(describe(path, exc, lines)) from exc
    _resolve_paths(config, path.parent)
    missing = [
        f"{path}: engines.{engine}.backends.{backend}: {binary} does not exist"
        for engine, ec in config.engines.items()
        for backend, binary in ec.backends.items()
        if binary is not None and not binary.is_file()
    ] + [
        f"{path}: models.{name}: {file} does not exist"
        for name, file in {**config.models, **config.images}.items()
        if not file.is_file()
    ]
    if missing:
        raise ConfigError("\n".join(missing))
    for name, ec in config.engines.items():
        try:
            ec.api_key  # noqa: B018 - read now: a missing token stops the worker at start
        except ConfigError as exc:
            raise ConfigError(f"{path}: engines.{name}.{exc}") from None
    return config


def _resolve_paths(config: WorkerConfig, base: Path) -> None:
    def resolve(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    for engine in config.engines.values():
        if engine.api_key_file is not None:
            engine.api_key_file = resolve(engine.api_key_file)
        engine.backends = {
            name: resolve(binary) if binary is not None else None
            for name, binary in engine.backends.items()
        }
    config.models = {name: resolve(file) for name, file in config.models.items()}
    config.images = {name: resolve(file) for name, file in config.images.items()}
    config.facts_root = resolve(config.facts_root)
    if config.reconfigure is not None and config.reconfigure.bios_password_file is not None:
        config.reconfigure.bios_password_file = resolve(config.reconfigure.bios_password_file)
