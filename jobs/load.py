"""Serving under load: the load a workload puts on a server, and what a load run reports.

Both sides use it: the coordinator validates a matrix's load workloads with `LoadSpec`, the
worker's load client (worker/load/) runs them and returns a `LoadResult` in
`RunResult.load`.

A matrix writes the load flat in a workload, beside its lengths::

    workloads:
      c4:  {concurrency: 4, requests: 64, prompt_tokens: 512, gen_tokens: 128}
      r2:  {request_rate: 2, duration_s: 60, slots: 4,
            prompt_tokens: {mean: 512, stddev: 128}, slo: {ttft_s: 2, itl_ms: 100}}

`concurrency: N` is a closed loop (N users, each sends its next request when the previous one
ended); `request_rate: R` an open loop (Poisson arrivals at R requests/s from a seeded
generator, never held back by slow requests). `gather_load` moves those keys under
`Workload.load`, which is what a JobSpec carries.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Report metrics of a load run (LoadSummary.metric), with their units.
THROUGHPUT = "throughput"  # output tokens/s, all users together
TPS_PER_USER = "tps_per_user"  # output tokens/s one user sees while its answer streams (median)
TTFT_P50, TTFT_P90, TTFT_P99 = "ttft_p50", "ttft_p90", "ttft_p99"  # seconds
ITL_P50, ITL_P99 = "itl_p50", "itl_p99"  # seconds between streamed tokens
E2E_P90 = "e2e_p90"  # seconds, request sent -> stream closed
GOODPUT = "goodput"  # requests/s that met every SLO the workload names
REQUEST_THROUGHPUT = "request_throughput"  # requests/s that completed without error
ERRORS = "errors"  # requests that failed (counted, never dropped)
LOAD_METRICS: dict[str, str] = {
    THROUGHPUT: "tokens/s", TPS_PER_USER: "tokens/s", TTFT_P50: "s", TTFT_P90: "s",
    TTFT_P99: "s", ITL_P50: "s", ITL_P99: "s", E2E_P90: "s", GOODPUT: "requests/s",
    REQUEST_THROUGHPUT: "requests/s", ERRORS: "requests",
}  # fmt: skip

# Engines with a load client (worker/load/): any other measures one stream at a time, and would
# file that under a workload that says otherwise.
LOAD_ENGINES = ("llama-server",)

# The keys that set a load workload's level: report axes (JobSpec.axes), so a sweep is a row
# or a column, and the x of the per-user chart.
CONCURRENCY, REQUEST_RATE = "concurrency", "request_rate"
LEVEL_AXES = (CONCURRENCY, REQUEST_RATE)
# Keys of a workload that describe load; `gather_load` moves them under `load`.
LOAD_KEYS = ("concurrency", "request_rate", "requests", "duration_s", "warmup_requests",
             "slots", "seed", "slo", "request_timeout_s")  # fmt: skip
# Bounds that keep one job finite whatever a matrix says: a day of load, a million requests.
MAX_DURATION_S = 86_400.0
MAX_REQUESTS = 1_000_000
MAX_CONCURRENCY = 4096
# A drawn length stays within mean +- this many standard deviations (and >= 1 token), so the
# longest request a workload can make is known before it runs (context checks use it).
LENGTH_SPREAD_SIGMAS = 4.0

Finite = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Slo(BaseModel):
    """Service-level objectives a request must meet to count towards goodput."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_s: Finite | None = None  # time to first token
    itl_ms: Finite | None = None  # the request's mean inter-token latency (decode time / gaps)
    e2e_s: Finite | None = None  # whole request

    @model_validator(mode="after")
    def _some(self) -> Slo:
        if self.ttft_s is None and self.itl_ms is None and self.e2e_s is None:
            raise ValueError("an slo names at least one of ttft_s, itl_ms, e2e_s")
        return self


class LoadSpec(BaseModel):
    """How hard, how long and how varied one load run is (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY)
    request_rate: Finite | None = None  # requests/s, Poisson arrivals
    requests: int | None = Field(default=None, ge=1, le=MAX_REQUESTS)  # measured, exactly
    duration_s: Finite | None = Field(default=None, le=MAX_DURATION_S)  # start no new one after
    warmup_requests: int = Field(default=1, ge=0, le=MAX_CONCURRENCY)  # sent first, not counted
    # Requests the server runs at once (llama-server -np): part of the server's load group, so
    # a server is started once per value. Closed loop: defaults to `concurrency`.
    slots: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY)
    seed: int = 0  # arrivals and drawn lengths
    # Bounded like a context (a million tokens): a spread beyond it only makes `longest`
    # overflow or ask for a context no server has.
    prompt_tokens_stddev: float = Field(default=0.0, ge=0, le=2**20, allow_inf_nan=False)
    gen_tokens_stddev: float = Field(default=0.0, ge=0, le=2**20, allow_inf_nan=False)
    slo: Slo | None = None
    # One request's limit (an error of kind `timeout` past it); None: the job's time limit.
    request_timeout_s: Finite | None = None

    @model_validator(mode="after")
    def _one_of_each(self) -> LoadSpec:
        if (self.concurrency is None) == (self.request_rate is None):
            raise ValueError(
                "a load workload names exactly one of concurrency (closed loop: N users) "
                "and request_rate (open loop: Poisson arrivals, requests/s)"
            )
        if (self.requests is None) == (self.duration_s is None):
            raise ValueError(
                "a load workload names exactly one of requests (how many are measured) "
                "and duration_s (how long new requests are started)"
            )
        if self.request_rate is not None and self.slots is None:
            raise ValueError(
                "request_rate needs slots: how many requests the server runs at once "
                "(llama-server -np); an open loop does not bound it"
            )
        if self.request_rate is not None and self.duration_s is not None:
            # Every arrival is drawn before the run starts, so this bounds memory and time too.
            expected = self.request_rate * self.duration_s
            if expected > MAX_REQUESTS:
                raise ValueError(
                    f"request_rate x duration_s is {expected:,.0f} requests, more than the "
                    f"{MAX_REQUESTS:,} one load run may send: lower either"
                )
        return self

    @property
    def mode(self) -> Literal["closed", "open"]:
        return "closed" if self.concurrency is not None else "open"

    def level(self) -> dict[str, int | float]:
        """How hard this load pushes: {"concurrency": N} or {"request_rate": R} (axes)."""
        if self.concurrency is not None:
            return {CONCURRENCY: self.concurrency}
        assert self.request_rate is not None  # the validator guarantees one of them
        return {REQUEST_RATE: self.request_rate}

    def server_slots(self) -> int:
        """The server's parallel slots for this load (llama-server -np)."""
        slots = self.slots if self.slots is not None else self.concurrency
        assert slots is not None  # the validator guarantees one of them
        return slots


def load_refusal(engine: str) -> str | None:
    """Why `engine` cannot run a load workload, or None when it can (submit and worker)."""
    if engine in LOAD_ENGINES:
        return None
    return (
        f"{engine} cannot run a load workload (concurrency or request_rate): only "
        f"{', '.join(LOAD_ENGINES)} has a load client; it would measure one stream"
    )


def longest(mean: int, stddev: float) -> int:
    """The longest length a workload draws around `mean` (LENGTH_SPREAD_SIGMAS)."""
    return mean + math.ceil(LENGTH_SPREAD_SIGMAS * stddev)


def _mean_and_stddev(value: Any, key: str) -> tuple[Any, float | None]:
    """`prompt_tokens: {mean: 512, stddev: 128}` -> (512, 128); a plain value -> (value, None)."""
    if not isinstance(value, dict):
        return value, None
    unknown = sorted(set(value) - {"mean", "stddev"})
    if unknown or "mean" not in value:
        raise ValueError(f"{key} is a number or {{mean: N, stddev: S}} (got keys {sorted(value)})")
    stddev = value.get("stddev", 0)
    if isinstance(stddev, bool) or not isinstance(stddev, int | float):
        raise ValueError(f"{key}.stddev must be a number of tokens, not {stddev!r}")
    return value["mean"], float(stddev)


def gather_load(data: Any) -> Any:
    """A workload as a matrix writes it (load keys flat) -> as Workload takes it (`load: {...}`).

    >>> gather_load({"concurrency": 4, "requests": 8, "prompt_tokens": {"mean": 64, "stddev": 8}})
    {'prompt_tokens': 64, 'load': {'concurrency': 4, 'requests': 8, 'prompt_tokens_stddev': 8.0}}
    """
    if not isinstance(data, dict):
        return data  # pydantic says what is wrong with it
    out = {k: v for k, v in data.items() if k not in LOAD_KEYS}
    flat = {k: data[k] for k in LOAD_KEYS if k in data}
    load = dict(data["load"]) if isinstance(data.get("load"), dict) else None
    if flat and "load" in data:
        raise ValueError("write the load either flat in the workload or under `load:`, not both")
    for key in ("prompt_tokens", "gen_tokens"):
        if key in data:
            out[key], stddev = _mean_and_stddev(data[key], key)
            if stddev is not None:
                flat[f"{key}_stddev"] = stddev
    if not flat:
        return out
    if load is None and not ({"concurrency", "request_rate"} & set(flat)):
        named = ", ".join(sorted(flat))
        raise ValueError(
            f"{named} describe a load run: add concurrency (closed loop) or request_rate "
            "(open loop) to this workload"
        )
    if "warmup_runs" in data:
        raise ValueError("a load workload counts its warm-up in warmup_requests, not warmup_runs")
    out["load"] = {**(load or {}), **flat}
    return out


# --- what a load run reports -----------------------------------------------------------------


class Distribution(BaseModel):
    """A sample's size and shape. Percentiles interpolate linearly between the two nearest
    ranks (numpy's default, `statistics.quantiles(method="inclusive")`): the p-th of n sorted
    values sits at rank (n - 1) * p / 100."""

    model_config = ConfigDict(extra="forbid")

    n: int
    mean: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float


ErrorKind = Literal["http", "timeout", "connection", "protocol", "server"]


class LoadRequest(BaseModel):
    """One measured request as the client saw it; seconds since the run started unless said."""

    model_config = ConfigDict(extra="forbid")

    index: int
    scheduled_s: float | None = None  # open loop: when its Poisson arrival was due
    sent_s: float
    prompt_tokens: int  # the server's count (usage/timings), else the requested length
    gen_tokens_requested: int
    output_tokens: int = 0  # the server's count of generated tokens (0 for a failed request)
    ttft_s: float | None = None  # sent -> first token (relative to sent)
    e2e_s: float | None = None  # sent -> stream closed or failed (relative to sent)
    # Each streamed token event's arrival, relative to `sent_s` (kept while the job's budget of
    # kept times lasts: LoadRun.chunk_times_dropped says when it ran out).
    chunk_s: list[float] = Field(default_factory=list)
    server_timings: dict[str, float] = Field(default_factory=dict)  # llama-server `timings`
    error: str | None = None
    error_kind: ErrorKind | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class LoadSummary(BaseModel):
    """One load run's figures, computed from every measured request (worker/load/summary.py)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["closed", "open"]
    concurrency: int | None = None
    request_rate: float | None = None
    slots: int
    requests: int  # measured requests sent
    ok: int
    errors: int
    error_kinds: dict[str, int] = Field(default_factory=dict)
    warmup_requests: int = 0
    warmup_errors: int = 0
    window_s: float  # first measured request sent -> last one ended
    request_throughput: float  # ok requests / window
    throughput: float  # output tokens of ok requests / window
    prompt_tokens: int  # totals over ok requests
    output_tokens: int
    ttft_s: Distribution | None = None  # over ok requests
    itl_s: Distribution | None = None  # over every gap between token events, all ok requests
    e2e_s: Distribution | None = None
    tps_per_user: Distribution | None = None  # per ok request: (events - 1) / decode span
    server_decode_tps: Distribution | None = None  # llama-server `predicted_per_second`
    server_prompt_tps: Distribution | None = None  # llama-server `prompt_per_second`
    slo: Slo | None = None
    good: int | None = None  # ok requests within every SLO (None: no SLO named)
    goodput: float | None = None  # good / window

    def metric(self, name: str) -> float | None:
        """A LOAD_METRICS value by name (None where the run has no figure for it)."""
        pick: dict[str, tuple[Distribution | None, str]] = {
            TPS_PER_USER: (self.tps_per_user, "p50"), TTFT_P50: (self.ttft_s, "p50"),
            TTFT_P90: (self.ttft_s, "p90"), TTFT_P99: (self.ttft_s, "p99"),
            ITL_P50: (self.itl_s, "p50"), ITL_P99: (self.itl_s, "p99"),
            E2E_P90: (self.e2e_s, "p90"),
        }  # fmt: skip
        if name in pick:
            dist, field = pick[name]
            return None if dist is None else float(getattr(dist, field))
        plain = {THROUGHPUT: self.throughput, GOODPUT: self.goodput, ERRORS: self.errors,
                 REQUEST_THROUGHPUT: self.request_throughput}  # fmt: skip
        if name not in plain:
            raise KeyError(f"unknown load metric {name!r}: known {sorted(LOAD_METRICS)}")
        value = plain[name]
        return None if value is None else float(value)


class ClientCheck(BaseModel):
    """Whether the load client itself may have limited or distorted what it measured."""

    model_config = ConfigDict(extra="forbid")

    wall_s: float
    loop_cpu_s: float  # CPU time of the event loop's thread (the client proper)
    process_cpu_s: float  # the whole worker process (telemetry and heartbeat threads included)
    loop_cpu_fraction: float  # loop_cpu_s / wall_s: 1.0 = one core, all the time
    loop_lag_s: Distribution | None = None  # a 10 ms ticker's lateness
    dispatch_late_s: Distribution | None = None  # open loop: sent - scheduled
    client_bound: bool = False
    reasons: list[str] = Field(default_factory=list)  # which rule flagged it, with the figures


class LoadRun(BaseModel):
    """One repetition of a load workload."""

    model_config = ConfigDict(extra="forbid")

    summary: LoadSummary
    client: ClientCheck
    records: list[LoadRequest] = Field(default_factory=list)
    records_dropped: int = 0  # measured requests past the result's budget (in the summary)
    chunk_times_dropped: bool = False  # some records lost `chunk_s` to the budget


class LoadResult(BaseModel):
    """What a load job returns in RunResult.load: one LoadRun per repetition."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str  # e.g. "/v1/completions"
    slots: int
    slot_context: int | None = None  # tokens per slot, as the server said (/props n_ctx)
    runs: list[LoadRun] = Field(default_factory=list)


# A sweep written in one workload (`concurrency: [1, 2, 4, 8]`) becomes one workload per level,
# named by it: `c4` (or `<name>-c4` for a named workload), `r0.5` for a request rate.
_LEVEL_PREFIX = {CONCURRENCY: "c", REQUEST_RATE: "r"}
MAX_LEVELS = 64  # in one sweep
MAX_SWEPT_WORKLOADS = 1024  # made by sweeps, in one file


def level_name(base: str | None, key: str, value: object) -> str:
    """The name of one level of a swept workload: `c4`, `chat-c4`, `r0.5`."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    level = f"{_LEVEL_PREFIX[key]}{text}"
    return level if base is None else f"{base}-{level}"


Moved = dict[tuple[str, ...], tuple[str, ...]]  # a new key path -> the one it came from
Problem = tuple[tuple[str, ...], str]  # (key path, what is wrong there)


def expand_level_lists(data: Any) -> tuple[Any, Moved, list[Problem]]:
    """A matrix file's raw data with every workload whose `concurrency` or `request_rate` is a
    list split into one named workload per level (and the `workload` axis, include and exclude
    entries naming it widened to all its levels). Returns (data, new key path -> the path it came
    from, problems). Anything not shaped as expected is left for validation to name."""
    if not isinstance(data, dict):
        return data, {}, []
    single = data.get("workload")
    if isinstance(single, dict) and _swept(single) is not None and "workloads" not in data:
        return _expand_single(data, single)
    named = data.get("workloads")
    if isinstance(named, dict):
        return _expand_named(data, named)
    return data, {}, []


def _expand_single(
    data: dict[Any, Any], single: dict[Any, Any]
) -> tuple[Any, Moved, list[Problem]]:
    problems: list[Problem] = []
    levels = _levels(None, single, problems)
    if not levels:
        return data, {}, problems
    out = {k: v for k, v in data.items() if k != "workload"} | {"workloads": levels}
    axes = out.get("matrix")
    if isinstance(axes, dict) and "workload" not in axes:
        out["matrix"] = {**axes, "workload": list(levels)}
    return out, {("workloads", name): ("workload",) for name in levels}, problems


def _expand_named(data: dict[Any, Any], named: dict[Any, Any]) -> tuple[Any, Moved, list[Problem]]:
    problems: list[Problem] = []
    moved: Moved = {}
    widened: dict[str, list[str]] = {}
    workloads: dict[Any, Any] = {}
    for name, work in named.items():
        if not (isinstance(work, dict) and isinstance(name, str) and _swept(work) is not None):
            workloads[name] = work
            continue
        levels = _levels(name, work, problems)
        clash = sorted(set(levels) & set(named))
        if clash:
            problems.append((("workloads", name), f"the names of its levels {clash} are taken"))
        workloads |= levels
        widened[name] = list(levels)
        moved |= {("workloads", level): ("workloads", name) for level in levels}
    if not widened:
        return data, {}, problems
    if len(moved) > MAX_SWEPT_WORKLOADS:
        problems.append((("workloads",), f"sweeps make {len(moved):,} workloads (at most "
                         f"{MAX_SWEPT_WORKLOADS:,}): split the file"))  # fmt: skip
        return data, {}, problems
    out = {**data, "workloads": workloads}
    axes = out.get("matrix")
    if isinstance(axes, dict) and isinstance(axes.get("workload"), list):
        out["matrix"] = {
            **axes,
            "workload": [w for n in axes["workload"] for w in _widen(widened, n)],
        }
    for section in ("include", "exclude"):
        entries = out.get(section)
        if isinstance(entries, list):
            out[section] = [_with_level(entry, level) for entry in entries
                            for level in _widen(widened, _named(entry))]  # fmt: skip
    return out, moved, problems


def _named(entry: Any) -> Any:
    return entry.get("workload") if isinstance(entry, dict) else None


def _with_level(entry: Any, level: Any) -> Any:
    return (
        {**entry, "workload": level} if isinstance(entry, dict) and "workload" in entry else entry
    )


def _widen(widened: dict[str, list[str]], name: Any) -> list[Any]:
    """The workloads a use of `name` stands for: its levels if it was swept, else itself."""
    return widened.get(name, [name]) if isinstance(name, str) else [name]


def _swept(work: dict[Any, Any]) -> str | None:
    """The level key of `work` given as a list, if any."""
    return next((k for k in LEVEL_AXES if isinstance(work.get(k), list)), None)


def _levels(base: str | None, work: dict[Any, Any], problems: list[Problem]) -> dict[str, Any]:
    key = _swept(work)
    assert key is not None
    values = work[key]
    where = ("workloads", base, key) if base is not None else ("workload", key)
    if not values or len(values) > MAX_LEVELS:
        problems.append((where, f"a sweep lists 1 to {MAX_LEVELS} levels (got {len(values)})"))
        return {}
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        problems.append((where, f"every level must be a number (got {values!r})"))
        return {}
    if len({level_name(base, key, v) for v in values}) != len(values):
        problems.append((where, "a level is listed twice"))
        return {}
    return {level_name(base, key, v): {**work, key: v} for v in values}
