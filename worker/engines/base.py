"""The engine adapter interface and its registry.

An adapter turns a JobSpec plus the box's own binary and model paths into an EngineOutcome. It
never raises for a failed benchmark: load failures, crashes and timeouts are outcomes.

Example::

    @register("llama-bench")
    class LlamaBench(Engine):
        def run(self, job, target): ...
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from jobs.load import LoadResult
from jobs.result import BackendCheck, EngineInfo, Measurement, RequestSample, Status
from jobs.spec import JobSpec
from jobs.telemetry import PhaseWindow
from worker.engines.process import ignore_pid
from worker.progress import ignore_phase

log = logging.getLogger("orch.worker")


@dataclass(frozen=True)
class RunTarget:
    """What the box's config resolved the job's names to."""

    binary: Path | None  # binary engines
    model_path: Path | None  # binary engines: the GGUF file
    timeout_s: float
    threads: int | None = None
    # Called with the engine's process id as soon as it exists (telemetry follows that process).
    on_process: Callable[[int], None] = ignore_pid
    url: str | None = None  # server engines: the running server
    served_model: str | None = None  # server engines: the model's id on that server
    image: Path | None = None  # vision workloads: the image file the job names
    # server engines: the bearer token from worker.yaml's api_key_env/api_key_file; kept out of
    # repr so that no log line or error that prints a target shows it
    api_key: str | None = field(default=None, repr=False)
    # LM Studio: the owner's runtime pin for the job's backend (`name` or `name@version`)
    runtime_pin: str | None = None
    # Called between the timed parts of a job (worker/progress.py): ("warm-up"), ("repetition",
    # k, N, tokens/s of the last one), ("running", None, N); never inside a timed request.
    on_phase: Callable[..., None] = ignore_phase


@dataclass
class EngineOutcome:
    status: Status
    engine: EngineInfo
    measurements: list[Measurement] = field(default_factory=list)
    error: str | None = None
    argv: list[str] = field(default_factory=list)
    phases: list[PhaseWindow] = field(default_factory=list)
    requests: list[RequestSample] = field(default_factory=list)
    load_time_s: float | None = None
    # What the engine said it ran on, checked against the job's backend (jobs.backends); the
    # runner turns a mismatch into Status.MISLABELLED.
    backend_check: BackendCheck | None = None
    load: LoadResult | None = None  # a load workload's runs (worker/load/)


def local_files(target: RunTarget) -> tuple[Path, Path]:
    """(binary, model file) of a binary engine; the worker config guarantees both."""
    if target.binary is None or target.model_path is None:
        raise ValueError("a binary engine needs a binary and a model file (check worker.yaml)")
    return target.binary, target.model_path


class Engine(ABC):
    """One engine family (llama-bench, llama-server, ...)."""

    name: str = ""

    @abstractmethod
    def run(self, job: JobSpec, target: RunTarget) -> EngineOutcome:
        """Run the job's measured runs; every failure is returned as an outcome."""

    def close(self) -> None:  # noqa: B027 - optional hook, most engines keep nothing running
        """Stop whatever the engine keeps running between jobs (a warm server)."""


_REGISTRY: dict[str, type[Engine]] = {}


E = TypeVar("E", bound=type["Engine"])


def register(name: str) -> Callable[[E], E]:
    """Class decorator: make an adapter available under `name`."""

    def decorate(cls: E) -> E:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


_INSTANCES: dict[str, Engine] = {}


def get_engine(name: str) -> Engine:
    """The process's one instance of an engine; other engines' warm servers are stopped first,
    so that nothing else holds the GPU or the CPU while this engine measures."""
    for other, instance in list(_INSTANCES.items()):
        if other != name:
            _close_quietly(other, instance)
    try:
        if name not in _INSTANCES:
            _INSTANCES[name] = _REGISTRY[name]()
        return _INSTANCES[name]
    except KeyError:
        known = ", ".join(registered())
        raise KeyError(f"no engine adapter named {name!r} (have: {known})") from None


def close_engines() -> None:
    for name, instance in _INSTANCES.items():
        _close_quietly(name, instance)


def _close_quietly(name: str, instance: Engine) -> None:
    """A server that cannot be told to unload must not cost the next job, or the shutdown."""
    try:
        instance.close()
    except Exception:
        log.exception("engine %s failed to release what it kept running", name)


def registered() -> list[str]:
    return sorted(_REGISTRY)
