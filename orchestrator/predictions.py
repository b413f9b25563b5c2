"""Was the planner right? Each job's prediction at submit against what happened when it ran.

A prediction holds when the outcome agrees with the verdict (predicted to load and it loaded;
predicted not to load and it failed to load), and the estimate is compared with the largest
memory the engine's process used, as the telemetry measured it: its DRM buffers (VRAM + GTT,
from fdinfo) where a GPU driver reported them, else its resident set (RSS). Only peaks measured
in the same run are used; a job without telemetry says so instead of a number. RSS also
counts the engine's own code and libraries (about 15 MiB for llama-server), which dominates for
tiny models: read the ratio for models of a realistic size.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.result import RunResult, Status
from jobs.spec import JobSpec
from orchestrator.store import JobRow, Prediction

_MIB = 2**20


@dataclass(frozen=True)
class PredictionCheck:
    job: JobSpec
    predicted: Prediction
    status: Status
    held: bool | None  # None: the verdict could not be wrong ("unknown") or the job was skipped
    measured_bytes: int | None
    measured_source: str | None

    @property
    def ratio(self) -> float | None:
        """Measured peak / predicted need."""
        if self.measured_bytes is None or not self.predicted.needs_bytes:
            return None
        return self.measured_bytes / self.predicted.needs_bytes

    def text(self) -> str:
        verdict = {True: "held", False: "WRONG", None: "-"}[self.held]
        parts = [f"predicted {self.predicted.text}", f"outcome {self.status.words}", verdict]
        if self.measured_bytes is not None:
            parts.append(
                f"measured peak {self.measured_bytes / _MIB:.1f} MiB ({self.measured_source}) "
                f"= {self.ratio:.2f}x the estimate"
            )
        elif self.status is Status.OK:
            parts.append("no memory telemetry")
        return "; ".join(parts)


def check_predictions(rows: list[JobRow]) -> list[PredictionCheck]:
    checks = []
    for row in rows:
        result, predicted = row.result, row.prediction
        if result is None or predicted is None:
            continue
        measured, source = peak_memory(result)
        checks.append(
            PredictionCheck(row.spec, predicted, result.status, _held(predicted, result.status),
                            measured, source)
        )  # fmt: skip
    return checks


def _held(predicted: Prediction, status: Status) -> bool | None:
    if predicted.kind == "unknown" or status in (Status.SKIPPED, Status.ERROR, Status.TIMEOUT):
        return None  # nothing tested the prediction (an error or timeout is not about memory)
    # A mislabelled run loaded and ran (on another backend than its label): it did load.
    loaded = status in (Status.OK, Status.MISLABELLED)
    return loaded == (predicted.kind != "will not load")


def peak_memory(result: RunResult) -> tuple[int | None, str | None]:
    """The engine process's peak memory in this run, and what it was read from."""
    telemetry = result.telemetry
    if telemetry is None:
        return None, None

    def peak(metric: str) -> float | None:
        peaks = [
            s.peak for p in telemetry.phases if (s := p.metrics.get(metric)) and s.peak is not None
        ]
        return max(peaks) if peaks else None

    vram, gtt = peak("drm_vram_bytes"), peak("drm_gtt_bytes")
    if vram is not None or gtt is not None:
        return int((vram or 0) + (gtt or 0)), "process VRAM + GTT, DRM fdinfo"
    rss = peak("rss_bytes")
    return (int(rss), "process RSS") if rss is not None else (None, None)


CHECKS_TITLE = "Planner predictions (at submit) against outcomes"


def check_items(checks: list[PredictionCheck]) -> list[str]:
    """One line per check and a tally; each report format adds its own bullets."""
    if not checks:
        return []
    items = [
        f"{c.job.host} {c.job.engine} {c.job.model} ctx {c.job.context}: {c.text()}" for c in checks
    ]
    wrong = sum(1 for c in checks if c.held is False)
    tested = sum(1 for c in checks if c.held is not None)
    return [*items, f"{tested - wrong}/{tested} predictions held"]
