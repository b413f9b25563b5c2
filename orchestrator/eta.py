"""A campaign's ETA: how long its jobs left should take, from earlier runs' wall times.

An estimate, and labelled as one with its basis: each job left takes the median wall time of
earlier successful runs of the same job (`Store.shape_key`: same host, engine, model, context,
workload, settings; any campaign); a job never run before takes the median of earlier runs of
the same engine and model on its host (rougher, counted apart); a job with neither is left out
and counted. Hosts run in parallel, one job at a time each: the ETA is the longest host's sum.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field

from jobs.spec import JobSpec


@dataclass
class Eta:
    seconds: float  # the longest host's sum of estimates
    jobs_left: int
    exact: int = 0  # jobs estimated from earlier runs of the same job
    similar: int = 0  # ... from runs of the same engine and model on the host
    unknown: int = 0  # jobs with no earlier run to go by (not in `seconds`)
    runs: int = 0  # earlier runs the estimate rests on (its n)
    per_host_s: dict[str, float] = field(default_factory=dict)

    def text(self) -> str:
        if self.jobs_left == 0:
            return "ETA: done"
        if self.exact + self.similar == 0:
            return f"ETA: unknown (no earlier run of any of the {self.jobs_left} jobs left)"
        basis = [f"n={self.runs} earlier runs"]
        if self.similar:
            basis.append(f"{self.similar} job(s) from runs of the same engine and model")
        if self.unknown:
            basis.append(f"{self.unknown} job(s) with no earlier run not counted")
        return f"ETA ~{duration_text(self.seconds)} (estimate: {'; '.join(basis)})"


def campaign_eta(pending: list[JobSpec], durations: dict[str, list[float]]) -> Eta:
    """The ETA of `pending` jobs from `durations` (Store.durations: seconds by shape key)."""
    from orchestrator.store import Store

    similar: dict[tuple[str, str, str], list[float]] = {}
    near_of: dict[str, tuple[str, str, str]] = {}
    for shape, seconds in durations.items():
        try:
            body = json.loads(shape)
            key = (str(body["host"]), str(body["engine"]), str(body["model"]))
        except (ValueError, KeyError, TypeError):
            continue
        near_of[shape] = key
        similar.setdefault(key, []).extend(seconds)
    eta = Eta(seconds=0.0, jobs_left=len(pending))
    used: set[str] = set()
    used_similar: set[tuple[str, str, str]] = set()
    for job in pending:
        shape = Store.shape_key(job)
        near = (job.host, job.engine, job.model)
        if durations.get(shape):
            estimate = statistics.median(durations[shape])
            eta.exact += 1
            used.add(shape)
        elif similar.get(near):
            estimate = statistics.median(similar[near])
            eta.similar += 1
            used_similar.add(near)
        else:
            eta.unknown += 1
            continue
        eta.per_host_s[job.host] = eta.per_host_s.get(job.host, 0.0) + estimate
    used |= {shape for shape, near in near_of.items() if near in used_similar}
    eta.runs = sum(len(durations[shape]) for shape in used)
    eta.seconds = max(eta.per_host_s.values(), default=0.0)
    return eta


def duration_text(seconds: float) -> str:
    """`45 s`, `12 min`, `3 h 20 min`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"
