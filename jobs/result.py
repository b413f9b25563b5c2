"""What a worker reports back for a job."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.facts import HostFacts
from jobs.load import LoadResult
from jobs.spec import JobSpec
from jobs.telemetry import PhaseWindow, Telemetry
from jobs.version import SCHEMA_VERSION

# The most a RunResult's JSON may take, on the wire and in a store. What a worker measures stays
# far below (engine stdout is cut at 16 MiB and kept only as parsed figures, stderr as a 256 KiB
# tail, telemetry series downsampled, load records budgeted): a larger one is an accident or
# forged. The worker publishes an error result in its place; a store keeps only its head aside.
MAX_RESULT_JSON_BYTES = 32 * 1024 * 1024


def oversized(body: bytes | str) -> str | None:
    """Why `body` (a result's JSON) is refused for its size, or None when it fits."""
    size = len(body.encode() if isinstance(body, str) else body)
    if size <= MAX_RESULT_JSON_BYTES:
        return None
    return (
        f"oversized: a result of {size / 2**20:.1f} MiB "
        f"(the most a result may take is {MAX_RESULT_JSON_BYTES // 2**20} MiB)"
    )


class Status(StrEnum):
    """Final outcome of a job. Every status is final: a failure is a result, not a crash."""

    OK = "ok"
    LOAD_FAILED = "load_failed"  # the engine could not load the model (OOM, bad file, ...)
    TIMEOUT = "timeout"  # the run went past the job's timeout_s and was killed
    ERROR = "error"  # anything else: engine crashed, bad output, gave up after re-deliveries
    # Never run: the coordinator's planner predicted it would not load (`submit
    # --skip-predicted-failures`); `error` holds the prediction, e.g. "predicted OOM (needs ...)".
    SKIPPED = "skipped"
    # The engine ran, but not on the job's backend (a CPU build behind a `vulkan` label, a GPU
    # that took no layers): `error` says what it reported, `RunResult.backend_check` keeps the
    # evidence, and no report shows its figures under that backend.
    MISLABELLED = "mislabelled"

    @property
    def words(self) -> str:
        """How a report shows it."""
        return self.value.replace("_", " ")


class Measurement(BaseModel):
    """One engine test (prompt processing or text generation) with every repetition kept."""

    model_config = ConfigDict(extra="forbid")

    test: Literal["pp", "tg"]
    n_prompt: int
    n_gen: int
    n_depth: int = 0
    samples_ts: list[float]  # tokens/s, one per repetition
    samples_ns: list[int] = Field(default_factory=list)  # wall time per repetition


# Fields of llama-bench's JSON (`-o json`) kept as EngineInfo.details, by the llama-bench engine
# and by `orch import llama-bench` alike (docs/facts.md lists what llama-bench prints).
LLAMA_BENCH_DETAIL_FIELDS = (
    "cpu_info", "gpu_info", "backends", "model_filename", "model_type", "model_size",
    "model_n_params", "n_batch", "n_ubatch", "n_threads", "type_k", "type_v", "n_gpu_layers",
    "flash_attn", "use_mmap", "test_time",
)  # fmt: skip


def measurement_from_llama_bench(test: dict[str, Any]) -> Measurement:
    """One test object of llama-bench's JSON output as a Measurement (tg when it generates)."""
    n_prompt, n_gen = int(test["n_prompt"]), int(test["n_gen"])
    return Measurement(
        test="tg" if n_gen > 0 else "pp",
        n_prompt=n_prompt,
        n_gen=n_gen,
        n_depth=int(test.get("n_depth", 0)),
        samples_ts=[float(x) for x in test["samples_ts"]],
        samples_ns=[int(x) for x in test.get("samples_ns") or []],
    )


class RequestSample(BaseModel):
    """One streamed request to a server engine, timed by the client, with the server's view."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int
    gen_tokens: int
    ttft_s: float  # request sent -> first token received
    ttft_source: Literal["client", "server"] = "client"  # server: the engine's own figure
    e2e_s: float  # request sent -> stream closed
    decode_tokens_per_s: float | None  # (tokens - 1) / (last token - first token)
    itl_s: dict[str, float] = Field(default_factory=dict)  # inter-token latency p50/p90/p99
    server_timings: dict[str, float] = Field(default_factory=dict)  # e.g. llama-server timings
    cached_prompt: bool = False  # the server reused cached prompt tokens (cache_n > 0)
    # The tokens reached the client in one burst, much faster than the server says it made
    # them (the HTTP side was starved or buffered): the client's TTFT and decode speed then
    # describe the transport, not the engine, and are left out of the figures.
    stream_burst: bool = False


class EngineInfo(BaseModel):
    """Which engine build ran, and what it printed about itself and the model."""

    model_config = ConfigDict(extra="forbid")

    name: str
    backend: str
    binary: str
    build_commit: str | None = None
    build_number: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class AppliedSetting(BaseModel):
    """One runtime setting the worker applied around a job, and what became of it."""

    model_config = ConfigDict(extra="forbid")

    requested: str
    previous: str | None = None  # as read before the job (None: the setter cannot read it)
    read_back: str | None = None  # as read after applying (None: cannot be read back)
    changed: bool = False  # orch wrote it (False: the box already was in the requested state)
    restored: bool | None = None  # put back after the job (None: nothing to restore)
    method: str = ""  # how: "sysfs", "hwmon", "command"
    error: str | None = None  # restoring failed (the job's figures still stand)


class Cooldown(BaseModel):
    """The cool-down gate before a job: wait until the GPU is cool and idle, or give up."""

    model_config = ConfigDict(extra="forbid")

    waited_s: float
    settled: bool  # False: the timeout passed first, and the job ran anyway (say so in reports)
    gpu_temp_c: float | None = None  # when the gate opened (or gave up)
    power_w: float | None = None
    max_gpu_temp_c: float | None = None  # the thresholds it waited for
    max_power_w: float | None = None
    sources: list[str] = Field(default_factory=list)  # files or APIs read


class BackendCheck(BaseModel):
    """What the engine said it ran on, checked against the job's backend label
    (`jobs.backends.check_backend` is the rule; the worker applies it after every run)."""

    model_config = ConfigDict(extra="forbid")

    label: str  # the job's backend
    verdict: Literal["match", "mismatch", "unverified"]
    # What the engine reported, e.g. ["CPU"], ["Vulkan"], ["ROCm0 (Radeon 8060S)"].
    devices: list[str] = Field(default_factory=list)
    gpu_layers_requested: int | None = None  # the -ngl orch passed (None: not a llama.cpp flag)
    gpu_layers_offloaded: int | None = None  # as the engine reported ("offloaded 25/25 layers")
    layers_total: int | None = None
    vram_bytes: int | None = None  # model bytes in GPU memory (Ollama's /api/ps size_vram)
    source: str = ""  # where the evidence came from, e.g. "llama-bench json", "load log"
    detail: str = ""  # why it matches, does not, or cannot be checked


class Disturbance(BaseModel):
    """What else used the box while the job ran (pyperf's system checks, measured live):
    a run above the worker owner's thresholds is `disturbed`, and reports draw no verdict
    from it."""

    model_config = ConfigDict(extra="forbid")

    duration_s: float
    logical_cpus: int
    # CPU seconds used by processes that are neither the worker nor the engine it started,
    # and that as a share of the box's capacity over the run (1.0 = every core, all the time).
    other_cpu_s: float | None = None
    other_cpu_fraction: float | None = None
    top_others: list[str] = Field(default_factory=list)  # e.g. "stress-ng (pid 812): 41.2 s"
    load_avg_1m_max: float | None = None
    cpu_freq_mhz_min: float | None = None  # lowest current frequency seen on any core
    cpu_freq_mhz_max: float | None = None  # the cores' rated maximum, where readable
    thermal_throttle_events: int | None = None  # core/package throttle counters, increase
    gpu_other_processes: list[str] = Field(default_factory=list)  # other users of the GPU
    thresholds: dict[str, float] = Field(default_factory=dict)  # the owner's, as applied
    disturbed: bool = False
    reasons: list[str] = Field(default_factory=list)  # why it counts as disturbed
    sources: list[str] = Field(default_factory=list)  # files or APIs read


class RunResult(BaseModel):
    """The outcome of one job. Upserted by `job_id` in the store, so a re-delivery counts once."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    job_id: str
    campaign: str
    host: str
    queue: str
    attempt: int
    # The lease generation (fencing token, worker/lease.py) of the agent that ran the job; None
    # for results no agent made (skipped, imported) and for those of older workers.
    lease_generation: int | None = None
    status: Status
    error: str | None = None
    measurements: list[Measurement] = Field(default_factory=list)
    engine: EngineInfo | None = None
    declared: dict[str, Any] = Field(default_factory=dict)
    argv: list[str] = Field(default_factory=list)
    started_at: datetime
    finished_at: datetime
    worker_version: str
    # The job as the worker received it, so a result explains itself without the submitter's
    # store (absent only when the message itself was invalid).
    job: JobSpec | None = None
    phases: list[PhaseWindow] = Field(default_factory=list)  # what the engine knew of its timing
    telemetry: Telemetry | None = None
    requests: list[RequestSample] = Field(default_factory=list)  # server engines, per request
    load_time_s: float | None = None  # set when this job loaded the model (not a warm server)
    host_facts: HostFacts | None = None  # the box's fingerprint when the job ran
    settings: dict[str, AppliedSetting] = Field(default_factory=dict)  # runtime settings
    cooldown: Cooldown | None = None
    backend_check: BackendCheck | None = None
    disturbance: Disturbance | None = None
    # Serving under load (a workload with concurrency or request_rate): per-run summaries, the
    # client's self-check and the requests (bounded); its jobs have no pp/tg measurements.
    load: LoadResult | None = None

    def measurement(self, test: str) -> Measurement | None:
        return next((m for m in self.measurements if m.test == test), None)

    @property
    def disturbed(self) -> bool:
        """Other work used the box beyond its owner's thresholds during the run: reports flag
        its figures and draw no faster/slower verdict from them."""
        return self.disturbance is not None and self.disturbance.disturbed
