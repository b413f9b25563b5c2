"""A single benchmark job: what to run, where, and its deterministic id."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.functional_validators import AfterValidator, BeforeValidator

from jobs.load import LoadSpec, gather_load
from jobs.version import SCHEMA_VERSION

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VRAM = re.compile(r"^(\d+)\s*([MG])(?:i?B)?$", re.IGNORECASE)

# Host settings that need a reboot to change: the BIOS carve-out, and the kernel's TTM page limit
# (`ttm.pages_limit`, 4 KiB pages: how much RAM the iGPU may map through GTT). A job that names
# one waits in the queue of that configuration until the box runs in it.
CONFIGURATION_AXES = ("vram_split", "ttm_pages_limit")
TTM_PAGE_BYTES = 4096
# Host settings a worker can change at runtime, through setters its owner allowed in the worker
# config: applied before the job, restored after. They do not route: same queue.
RUNTIME_AXES = ("platform_profile", "power_limit_w")
# Options an engine applies to one job (jobs/engineoptions.py: which engine takes which).
ENGINE_OPTIONS = ("flash_attention", "kv_offload", "think")


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit"
        )
    return value


def normalize_vram_split(value: object) -> str:
    """`32g`, `32 GiB`, `512M` -> `32G`, `512M`: the carve-out size as the BIOS shows it."""
    text = str(value).strip()
    match = _VRAM.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a VRAM size: expected e.g. 512M, 32G or 96G")
    return f"{int(match.group(1))}{match.group(2).upper()}"


def vram_split_bytes(label: str) -> int:
    """ "512M" -> 536870912, "32G" -> 34359738368 (a normalized carve-out label, in bytes)."""
    label = normalize_vram_split(label)
    return int(label[:-1]) * (2**30 if label.endswith("G") else 2**20)


def normalize_pages_limit(value: object) -> str:
    """`ttm.pages_limit` as the kernel takes it: a positive number of 4 KiB pages."""
    try:
        pages = int(str(value).strip())
    except ValueError:
        raise ValueError(f"ttm_pages_limit {value!r} is not a number of 4 KiB pages") from None
    if pages <= 0:
        raise ValueError(f"ttm_pages_limit must be positive, not {value!r}")
    return str(pages)


def normalize_setting(axis: str, value: object) -> str:
    """A runtime setting's value as a job carries it: `80.0` W -> "80", a profile name as is."""
    if axis == "power_limit_w":
        try:
            watts = float(str(value))
        except ValueError:
            raise ValueError(f"power_limit_w {value!r} is not a number of watts") from None
        if not (watts > 0 and math.isfinite(watts)):
            raise ValueError(f"power_limit_w must be a positive, finite number, not {value!r}")
        return f"{watts:g}"
    if axis == "platform_profile":
        return _check_name(str(value))
    raise ValueError(f"unknown runtime setting {axis!r}: known {RUNTIME_AXES}")


# llama.cpp's n_ctx is a uint32_t (llama.h, `struct llama_context_params`).
MAX_CONTEXT = 2**32 - 1
_CONTEXT = re.compile(r"^(\d{1,19})\s*([KM])?$", re.IGNORECASE)
_CONTEXT_UNIT = {"": 1, "K": 1024, "M": 1024 * 1024}
_NOT_A_CONTEXT = (
    "not a context size: expected a whole number of tokens such as 4096, 16K or 1M "
    "(K = 1024 tokens; no 'KB', no decimals)"
)


def parse_context(value: object) -> int:
    """A context size in tokens, as people write it: 4096, "16K", "198K", "1M".

    >>> parse_context("16K"), parse_context("198k"), parse_context("1M"), parse_context(512)
    (16384, 202752, 1048576, 512)

    K = 1024 tokens and M = 1024 K, as model cards and LM Studio count context lengths ("128K"
    is 131072). Only whole numbers of tokens: "16KB" (a context counts tokens, not bytes),
    "1.5K" (write 1536) and "16k tokens" are refused, and so are 0 and anything above
    llama.cpp's 32-bit n_ctx. Messages leave the value out: callers say where it was and what.
    """
    if isinstance(value, bool):  # YAML reads `yes` as True, an int subclass
        raise ValueError(_NOT_A_CONTEXT)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        tokens = value
    else:
        match = _CONTEXT.match(str(value).strip()) if isinstance(value, str) else None
        if match is None:
            raise ValueError(_NOT_A_CONTEXT)
        tokens = int(match.group(1)) * _CONTEXT_UNIT[(match.group(2) or "").upper()]
    if tokens <= 0:
        raise ValueError("a context must be a positive number of tokens")
    if tokens > MAX_CONTEXT:
        raise ValueError(f"a context is at most {MAX_CONTEXT} tokens (llama.cpp's n_ctx)")
    return tokens


def parse_on_off(value: object) -> str:
    """An engine switch as a matrix writes it: `on`/`off` (YAML 1.1 reads them as booleans, so
    true/false are the same); "auto" is refused, since leaving the axis out is the engine's own
    default and a run on `auto` cannot be checked against what it resolved to."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    if text in ("on", "true"):
        return "on"
    if text in ("off", "false"):
        return "off"
    if text == "auto":
        raise ValueError("`auto` is the engine's default: leave the axis out instead")
    raise ValueError(f"{value!r} is not on or off")


Name = Annotated[str, AfterValidator(_check_name)]
# An engine switch (flash_attention, think): "on" or "off" (`parse_on_off`).
OnOff = Annotated[str, BeforeValidator(parse_on_off)]
# A context size in tokens, with K/M suffixes (`parse_context`).
Context = Annotated[int, BeforeValidator(parse_context)]
# A positive, finite number of watts ("1e999" would reach a setter as infinity).
Watts = Annotated[float, Field(gt=0, allow_inf_nan=False)]
VramSplit = Annotated[str, AfterValidator(normalize_vram_split)]


class Workload(BaseModel):
    """How much to prefill and generate per measured run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_tokens: PositiveInt = 512
    gen_tokens: PositiveInt = 128
    # A fixed prompt (e.g. "编写一个科技公司的官网的HTML") instead of `prompt_tokens` synthetic
    # tokens; server engines only (llama-bench measures synthetic prompts).
    prompt_text: str | None = Field(default=None, min_length=1)
    # Vision models: the name of an image in the worker config's `images` (sent with the prompt,
    # base64, by the engines that take images: lmstudio, ollama, openai).
    image: Name | None = None
    # Server engines: requests sent (and not counted) before the measured ones.
    warmup_runs: int = Field(default=1, ge=0)
    # Serving under load (jobs/load.py): many requests at once instead of one stream. Written
    # flat in a matrix (`concurrency: 4, requests: 64`); left out of the job's JSON when unset,
    # so earlier jobs keep their ids and older workers still read the messages.
    load: LoadSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _gather_load(cls, data: Any) -> Any:
        return gather_load(data)

    @model_serializer(mode="wrap")
    def _omit_unset_load(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("load") is None:
            data.pop("load", None)
        return data


def queue_name(host: str, configuration: dict[str, str]) -> str:
    """The Celery queue of one host in one hardware configuration.

    >>> queue_name("laptop-80w", {"vram_split": "32G"})
    'orch.laptop-80w.vram-32G'

    The configuration part is one dot-free segment, so `host_of_queue` can undo it.
    """
    parts = [f"vram-{configuration['vram_split']}"] if configuration.get("vram_split") else []
    if configuration.get("ttm_pages_limit"):
        parts.append(f"ttm-{configuration['ttm_pages_limit']}")
    return f"orch.{host}." + ("+".join(parts) if parts else "default")


def host_of_queue(queue: str) -> str | None:
    """`orch.laptop-80w.vram-32G` -> `laptop-80w`; None for a queue that is not orch's."""
    if not queue.startswith("orch.") or queue.count(".") < 2:
        return None
    return queue[len("orch.") :].rsplit(".", 1)[0]


def configuration_of_queue(queue: str) -> dict[str, str]:
    """The configuration a queue stands for: the inverse of `queue_name`.

    >>> configuration_of_queue("orch.halo.vram-32G+ttm-8388608")
    {'vram_split': '32G', 'ttm_pages_limit': '8388608'}
    """
    out: dict[str, str] = {}
    for part in queue.rsplit(".", 1)[-1].split("+"):
        if part.startswith("vram-"):
            out["vram_split"] = part[len("vram-") :]
        elif part.startswith("ttm-"):
            out["ttm_pages_limit"] = part[len("ttm-") :]
    return out


def configuration_label(configuration: Mapping[str, str]) -> str:
    """How every command spells a configuration: `vram_split=32G, ttm_pages_limit=8388608`."""
    return (
        ", ".join(
            f"{axis}={configuration[axis]}" for axis in CONFIGURATION_AXES if axis in configuration
        )
        or "no vram_split"
    )


def _configuration_order(configuration: dict[str, str]) -> tuple[int, int]:
    vram = configuration.get("vram_split")
    pages = configuration.get("ttm_pages_limit")
    return (vram_split_bytes(vram) if vram else 0, int(pages) if pages else 0)


def reconfiguration_sequence(
    current: dict[str, str], pending: list[dict[str, str]]
) -> list[dict[str, str]]:
    """The order a host visits the configurations it has work in: where it is now first, then
    the others smallest first, each once (so reboots = configurations to visit - 1 when the box
    starts in one of them). The agent that reboots itself and the coordinator that shows the
    plan both follow this order.

    >>> small, big = {"vram_split": "512M"}, {"vram_split": "32G"}
    >>> reconfiguration_sequence(small, [big, small])
    [{'vram_split': '512M'}, {'vram_split': '32G'}]
    """
    distinct = {queue_name("-", c): c for c in pending}
    rest = sorted((c for c in distinct.values() if c != current), key=_configuration_order)
    return ([current] if current in distinct.values() else []) + rest


def configuration_of(facts: dict[str, Any]) -> dict[str, str]:
    """The reboot-bound part of a host's facts (what routes a job to a queue)."""
    return {axis: str(facts[axis]) for axis in CONFIGURATION_AXES if facts.get(axis) is not None}


class JobSpec(BaseModel):
    """One job: one engine run of one model on one host configuration, `repetitions` times."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    campaign: Name
    host: Name
    engine: Name
    model: str = Field(min_length=1)
    backend: Name
    context: PositiveInt
    configuration: dict[str, str] = Field(default_factory=dict)
    # Runtime settings (RUNTIME_AXES) the worker applies around this job, e.g.
    # {"platform_profile": "low-power", "power_limit_w": "45"}.
    settings: dict[str, str] = Field(default_factory=dict)
    # The matrix's name for this job's host configuration, when it used a named one.
    config_name: Name | None = None
    workload: Workload = Workload()
    # The matrix's name for this job's workload, when it named several (`workloads:`).
    workload_name: Name | None = None
    # llama.cpp's -ngl when the matrix's `gpu_layers` axis sets it; None: every layer on a GPU
    # backend, 0 on `cpu` (what the engine ran with is in RunResult.backend_check).
    gpu_layers: int | None = Field(default=None, ge=0)
    # Engine options from the matrix's axes; None: the engine's default (jobs/engineoptions.py
    # says which engine takes which, and how). flash_attention: llama.cpp's -fa, LM Studio's
    # `flash_attention`; kv_offload: the KV cache in GPU memory (false: in RAM); think: a
    # thinking model's thinking (Ollama's `think`; unset there means off, as before).
    flash_attention: OnOff | None = None
    kv_offload: bool | None = None
    think: OnOff | None = None
    repetitions: PositiveInt = 3
    timeout_s: PositiveInt = 3600
    job_id: str = ""

    @field_validator("configuration", mode="before")
    @classmethod
    def _normalize_configuration(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value  # pydantic says what is wrong with it
        unknown = sorted(set(value) - set(CONFIGURATION_AXES))
        if unknown:
            raise ValueError(f"unknown configuration axes {unknown}: known {CONFIGURATION_AXES}")
        normalize = {"vram_split": normalize_vram_split, "ttm_pages_limit": normalize_pages_limit}
        return {k: normalize[k](v) for k, v in value.items()}

    @field_validator("settings", mode="before")
    @classmethod
    def _normalize_settings(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value  # pydantic says what is wrong with it
        return {str(k): normalize_setting(str(k), v) for k, v in sorted(value.items())}

    @model_validator(mode="after")
    def _fill_or_check_id(self) -> JobSpec:
        expected = self.compute_id()
        if not self.job_id:
            object.__setattr__(self, "job_id", expected)
        elif self.job_id != expected:
            raise ValueError(
                f"job_id {self.job_id} does not match its spec (expected {expected}): "
                "the message was altered or comes from another orch version"
            )
        return self

    def compute_id(self) -> str:
        """Hash of the canonical spec (campaign included): the same job always has the same id."""
        body = self.model_dump(mode="json", exclude={"job_id", "schema_version"})
        # Fields added later hash only when set, so earlier jobs keep their ids.
        for later in ("settings", "config_name", "workload_name", "gpu_layers", *ENGINE_OPTIONS):
            if body[later] is None or body[later] == {}:
                del body[later]
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def queue(self) -> str:
        return queue_name(self.host, self.configuration)

    def load_group(self) -> tuple[str, ...]:
        """Jobs with the same group can share one loaded model (a warm server): run them back to
        back and the campaign loads each model once per group."""
        # A load workload's server slots (llama-server -np) are a server flag: a server per value.
        slots = str(self.workload.load.server_slots()) if self.workload.load else ""
        return (self.queue, self.engine, self.model, self.backend, str(self.context),
                str(self.gpu_layers), str(self.flash_attention), str(self.kv_offload),
                slots)  # fmt: skip

    def axes(self) -> dict[str, Any]:
        """The values that identify this job in a report."""
        return {
            "host": self.host,
            "engine": self.engine,
            "model": self.model,
            "backend": self.backend,
            "context": self.context,
            **self.configuration,
            **self.settings,
            **({"configuration": self.config_name} if self.config_name else {}),
            **({"workload": self.workload_name} if self.workload_name else {}),
            **(self.workload.load.level() if self.workload.load else {}),
            **({"gpu_layers": self.gpu_layers} if self.gpu_layers is not None else {}),
            **{k: getattr(self, k) for k in ENGINE_OPTIONS if getattr(self, k) is not None},
        }
