"""The figures a report can show, each with its unit and how to read it from a RunResult.

A metric gives a list of samples per job: one per repetition for speeds and TTFT, one per
decode window (a server job has one per request; llama-bench one for the run) for GPU/copy
busy and power, and one per job for load time, peaks and energy per token (total energy over
total tokens of the decode windows). A job without the figure gives an empty list, so the
report shows "-" (missing), never 0. Values are in the unit of the metric's title (bytes become GB).

Example::

    tg = METRICS["tg"]
    tg.values(result)          # [43.1, 42.8, 43.5] tokens/s
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jobs import load as lm
from jobs.result import RunResult
from jobs.telemetry import PhaseSummary, Telemetry

_GB = 1e9


@dataclass(frozen=True)
class Metric:
    key: str  # as named in --metrics
    title: str  # row label, unit included
    column: str  # tidy CSV/JSON column (median per job), unit in the name
    values: Callable[[RunResult], list[float]]
    # Words for a ratio above / below 1 when the difference is real, and which of the two is
    # a regression for `orch compare --fail-on-regression` (None: neither is).
    up_word: str = "higher"
    down_word: str = "lower"
    regression: str | None = None  # "up" or "down"
    hide_when_constant: bool = False  # left out of the default metrics when it never varies


def _samples(test: str) -> Callable[[RunResult], list[float]]:
    def values(result: RunResult) -> list[float]:
        m = result.measurement(test)
        return list(m.samples_ts) if m else []

    return values


def _ttft(result: RunResult) -> list[float]:
    # A request whose stream arrived in a burst timed the transport, not the engine.
    return [r.ttft_s for r in result.requests if not r.stream_burst]


def _gen_tokens(result: RunResult) -> list[float]:
    """Tokens each request generated, as counted; llama-bench's n_gen is what it was told to
    generate, a setting rather than a measurement, so it gives no figure here."""
    return [float(r.gen_tokens) for r in result.requests]


def _load_time(result: RunResult) -> list[float]:
    return [result.load_time_s] if result.load_time_s is not None else []


def _main_phases(telemetry: Telemetry) -> list[PhaseSummary]:
    """The phases whose figures a report shows: every decode window (what tokens/s is about; a
    server job has one per request), else the whole run (llama-bench), else the first phase."""
    for name in ("decode", "run"):
        phases = [p for p in telemetry.phases if p.phase == name]
        if phases:
            return phases
    return telemetry.phases[:1]


def _peak(*names: str) -> Callable[[RunResult], list[float]]:
    """The largest peak over all phases of the first metric the job has, in GB."""

    def values(result: RunResult) -> list[float]:
        if result.telemetry is None:
            return []
        for name in names:
            peaks = [
                s.peak
                for p in result.telemetry.phases
                if (s := p.metrics.get(name)) is not None and s.peak is not None
            ]
            if peaks:
                return [max(peaks) / _GB]
        return []

    return values


def _mean(*names: str) -> Callable[[RunResult], list[float]]:
    """One value per main phase: its mean of the first metric the job has."""

    def values(result: RunResult) -> list[float]:
        phases = _main_phases(result.telemetry) if result.telemetry else []
        for name in names:
            means = [
                s.mean
                for p in phases
                if (s := p.metrics.get(name)) is not None and s.mean is not None
            ]
            if means:
                return means
        return []

    return values


def _power(result: RunResult) -> list[float]:
    telemetry = result.telemetry
    if telemetry is None or telemetry.energy_metric is None:
        return []
    return _mean(telemetry.energy_metric)(result)


def _energy(per_token: bool) -> Callable[[RunResult], list[float]]:
    """J/token (or tokens/s per W, which is tokens/J) over all main phases: total energy over
    total tokens, so every decode window counts by its size, not only the last one."""

    def values(result: RunResult) -> list[float]:
        phases = _main_phases(result.telemetry) if result.telemetry else []
        measured = [p for p in phases if p.energy_j is not None and p.tokens > 0]
        energy = sum(p.energy_j or 0.0 for p in measured)
        tokens = sum(p.tokens for p in measured)
        if measured and energy > 0:
            return [energy / tokens if per_token else tokens / energy]
        # Summaries that kept only the ratio (no energy): one per phase.
        field = [p.j_per_token if per_token else p.tokens_per_s_per_w for p in phases]
        return [float(v) for v in field if v is not None]

    return values


def power_source(result: RunResult) -> str | None:
    """What the power figures measured, when it is not the GPU alone (shown as a footnote)."""
    telemetry = result.telemetry
    if telemetry is None or telemetry.energy_metric is None:
        return None
    if telemetry.energy_metric == "package_power_w":
        return "CPU package power (RAPL), not the GPU"
    if any(s.power_includes_cpu for s in telemetry.sources):
        return "APU package power: includes the CPU"
    return None


def _load(name: str) -> Callable[[RunResult], list[float]]:
    """One value per repetition of a load run (its LoadSummary), where the run has the figure."""

    def values(result: RunResult) -> list[float]:
        runs = result.load.runs if result.load else []
        return [v for run in runs if (v := run.summary.metric(name)) is not None]

    return values


# (up_word, down_word, regression)
_SPEED = ("faster", "slower", "down")
_TIME = ("slower", "faster", "up")

_ONE_STREAM = (
    Metric("tg", "tg tokens/s", "tg_tokens_per_s", _samples("tg"), *_SPEED),
    Metric("pp", "pp tokens/s", "pp_tokens_per_s", _samples("pp"), *_SPEED),
    Metric("ttft", "TTFT (s)", "ttft_s", _ttft, *_TIME),
    Metric(
        "tokens",
        "generated tokens / request",
        "gen_tokens",
        _gen_tokens,
        "more",
        "fewer",
        hide_when_constant=True,
    ),  # fmt: skip
    Metric("load", "load time (s)", "load_time_s", _load_time, *_TIME),
    Metric("vram", "peak VRAM (GB)", "peak_vram_gb", _peak("vram_used_bytes", "drm_vram_bytes")),
    Metric("gtt", "peak GTT (GB)", "peak_gtt_gb", _peak("gtt_used_bytes", "drm_gtt_bytes")),
    Metric("rss", "peak RSS (GB)", "peak_rss_gb", _peak("rss_bytes")),
    Metric(
        "gpu_busy", "GPU busy (%)", "gpu_busy_pct", _mean("gpu_busy_pct", "engine_gfx_busy_pct")
    ),  # fmt: skip
    Metric(
        # The engine's own copy engine where the GPU says it (amdgpu fdinfo, Windows per
        # process), else the adapter's (Windows PDH without per-process counters).
        "copy_busy",
        "copy engine busy (%)",
        "copy_engine_busy_pct",
        _mean("engine_dma_busy_pct", "gpu_copy_busy_pct"),
    ),  # fmt: skip
    Metric("power", "mean power (W)", "power_w", _power),
    Metric(
        "j_per_token",
        "energy (J/token)",
        "j_per_token",
        _energy(per_token=True),
        "less efficient",
        "more efficient",
        "up",
    ),  # fmt: skip
    Metric(
        "tps_per_w",
        "tokens/s per W",
        "tokens_per_s_per_w",
        _energy(per_token=False),
        "more efficient",
        "less efficient",
        "down",
    ),  # fmt: skip
)
# Serving under load (jobs/load.py names them): tokens and requests per second are better
# higher, latencies lower, errors fewer.
_LOAD_TITLES = {
    lm.THROUGHPUT: "throughput (tokens/s, all users)", lm.TPS_PER_USER: "tokens/s per user",
    lm.TTFT_P50: "TTFT p50 (s)", lm.TTFT_P90: "TTFT p90 (s)", lm.TTFT_P99: "TTFT p99 (s)",
    lm.ITL_P50: "ITL p50 (s)", lm.ITL_P99: "ITL p99 (s)", lm.E2E_P90: "E2E p90 (s)",
    lm.GOODPUT: "goodput (requests/s)", lm.ERRORS: "errors (requests)",
}  # fmt: skip
_LOAD_WORDS = {lm.THROUGHPUT: _SPEED, lm.TPS_PER_USER: _SPEED, lm.GOODPUT: _SPEED,
               lm.ERRORS: ("more", "fewer", "up")}  # fmt: skip
_UNIT_COLUMN = {"tokens/s": "tokens_per_s", "requests/s": "requests_per_s", "s": "s",
                "requests": "requests"}  # fmt: skip
LOAD_METRIC_LIST = tuple(
    Metric(name, title, f"{name}_{_UNIT_COLUMN[lm.LOAD_METRICS[name]]}", _load(name),
           *_LOAD_WORDS.get(name, _TIME))
    for name, title in _LOAD_TITLES.items()
)  # fmt: skip
# Load figures read after tg, pp and TTFT (the one-stream speeds), before memory and power.
METRIC_LIST = (*_ONE_STREAM[:3], *LOAD_METRIC_LIST, *_ONE_STREAM[3:])
METRICS = {m.key: m for m in METRIC_LIST}
# Metrics whose figures come from a power reading (footnoted with the power source).
POWER_METRICS = frozenset({"power", "j_per_token", "tps_per_w"})


def source_note(metric_key: str, result: RunResult) -> str | None:
    """Where a cell's figure came from, when it is not what the column suggests: a footnote.

    Power read from the APU or CPU package; a pp speed an engine could only estimate (LM
    Studio: prompt tokens / its own TTFT, `EngineInfo.details["pp_source"]`); a TTFT the server
    reported instead of the client timing it; a load run whose client flagged itself as
    possibly the bottleneck (ClientCheck.client_bound).
    """
    if metric_key in POWER_METRICS:
        return power_source(result)
    if metric_key in _LOAD_TITLES and result.load is not None:
        bound = [run for run in result.load.runs if run.client.client_bound]
        if bound:
            runs = len(result.load.runs)
            return f"the load client may have been the bottleneck ({len(bound)} of {runs} runs)"
    if metric_key == "pp" and result.engine is not None:
        return result.engine.details.get("pp_source")
    if metric_key == "ttft" and any(r.ttft_source == "server" for r in result.requests):
        return f"TTFT as {result.engine.name if result.engine else 'the server'} reports it"
    return None
