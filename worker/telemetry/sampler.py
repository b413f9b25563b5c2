"""The sampler: reads every available source at a fixed interval around a measured run.

Example (what the runner does)::

    with Sampler(default_sources(), interval_s=0.1) as sampler:
        outcome = engine.run(job, replace(target, on_process=sampler.watch))
    telemetry = sampler.summarize(sampler.to_relative(outcome.phases))

On __enter__ every source is probed (absent ones are reported, not sampled) and one baseline
sample is taken before the run; a background thread then samples every `interval_s` on a fixed
schedule (a slow read delays one sample, it does not shift the rest); __exit__ takes a last
sample, stops the thread and closes the sources. A source that raises is skipped for that
sample and dropped after a few failures in a row: telemetry never fails a job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from jobs.telemetry import PhaseWindow, SourceStatus, Telemetry
from worker.telemetry.base import Source, default_sources
from worker.telemetry.summary import Sample, downsample, energy_metric, summarize_phase

log = logging.getLogger("orch.telemetry")

_MAX_FAILURES_IN_A_ROW = 3


@dataclass
class _Entry:
    """An available source and what the sampler learnt of it during the run."""

    source: Source
    status: SourceStatus
    failures: int = 0  # in a row; at _MAX_FAILURES_IN_A_ROW the source is dropped
    produced: bool = False


class Sampler:
    """Samples `sources` (default: every registered source under `root`) every `interval_s`.

    `clock` is the time base of everything: PhaseWindow times given to `to_relative` must come
    from the same clock (time.monotonic by default). `threaded=False` starts no thread: the
    caller takes samples with `tick()` (tests with a fake clock do). When two sources give the
    same metric, the one earlier in `sources` wins (default_sources is in precedence order).
    One Sampler per measured run.
    """

    def __init__(
        self,
        sources: Sequence[Source] | None = None,
        *,
        interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        root: Path = Path("/"),
        threaded: bool = True,
        max_points: int = 300,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.sources = list(sources) if sources is not None else default_sources(root)
        self.interval_s = interval_s
        self.clock = clock
        self.threaded = threaded
        self.max_points = max_points
        self.t0: float | None = None  # clock reading of the baseline sample
        self._statuses: list[SourceStatus] = []
        self._active: list[_Entry] = []
        self._samples: list[Sample] = []
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Held while the thread waits for its next slot; __exit__ releases it to wake the
        # thread at once (see _loop).
        self._wake = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cpu_s = 0.0

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Sampler:
        self._statuses = [self._probe(source) for source in self.sources]
        self._active = [
            _Entry(source, status)
            for source, status in zip(self.sources, self._statuses, strict=True)
            if status.available
        ]
        if self._pid is not None:
            self._forward_watch(self._pid)
        self.t0 = self.clock()
        self._take(self.t0)
        if self.threaded:
            self._stop.clear()
            self._wake = threading.Lock()
            self._wake.acquire()
            self._thread = threading.Thread(target=self._loop, name="orch-telemetry", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is not None:
            self._stop.set()
            self._wake.release()
            self._thread.join()
            self._thread = None
        self._take(self.clock())
        for entry in self._active:
            try:
                entry.source.close()
            except Exception:  # a failing close must not hide the run's own outcome
                log.exception("telemetry source %s failed to close", entry.status.name)

    def watch(self, pid: int) -> None:
        """Follow the engine's process (RunTarget.on_process); safe from any thread."""
        with self._lock:
            self._pid = pid
            if self.t0 is not None:
                self._forward_watch(pid)

    def tick(self) -> None:
        """Take one sample now (for threaded=False)."""
        if self.t0 is None:
            raise RuntimeError("Sampler.tick() outside its with-block")
        self._take(self.clock())

    # -- results ---------------------------------------------------------------------------

    def to_relative(self, windows: Sequence[PhaseWindow]) -> list[PhaseWindow]:
        """PhaseWindows timed on `clock` -> seconds since sampling started (the contract's)."""
        origin = self.t0 if self.t0 is not None else 0.0
        return [
            w.model_copy(update={"start_s": w.start_s - origin, "end_s": w.end_s - origin})
            for w in windows
        ]

    def summarize(self, phases: Sequence[PhaseWindow] = ()) -> Telemetry:
        """Per-phase summaries (times relative to t0), energy, series and the sampler's cost.

        Without phases the whole run is one "run" phase.
        """
        with self._lock:
            samples = list(self._samples)
            cpu_s = self._cpu_s
        duration = samples[-1].t_s if samples else 0.0
        windows = list(phases) or [PhaseWindow(phase="run", start_s=0.0, end_s=duration)]
        power = energy_metric(samples)
        return Telemetry(
            interval_s=self.interval_s,
            samples=len(samples),
            sources=self.statuses(),
            phases=[summarize_phase(samples, window, power) for window in windows],
            series=downsample(samples, self.max_points),
            energy_metric=power,
            sampler_cpu_s=cpu_s,
            sampler_cpu_pct=100.0 * cpu_s / duration if duration > 0 else 0.0,
        )

    def statuses(self) -> list[SourceStatus]:
        """Each source's status, with what went wrong during the run appended to its detail."""
        notes = {id(entry.status): self._note(entry) for entry in self._active}
        out = []
        for status in self._statuses:
            note = notes.get(id(status))
            if note:
                detail = f"{status.detail}; {note}" if status.detail else note
                status = status.model_copy(update={"detail": detail})
            out.append(status)
        return out

    def _note(self, entry: _Entry) -> str | None:
        if entry.failures >= _MAX_FAILURES_IN_A_ROW:
            return f"stopped after {entry.failures} failed reads in a row"
        if not entry.produced and self._samples:
            return "gave no reading during the run"
        return None

    # -- internals -------------------------------------------------------------------------

    def _probe(self, source: Source) -> SourceStatus:
        try:
            return source.probe()
        except Exception as exc:  # a probe bug must read as "absent", not fail the job
            name = source.name or type(source).__name__
            log.exception("telemetry source %s failed to probe", name)
            return SourceStatus(name=name, available=False, detail=f"probe failed: {exc!r}")

    def _forward_watch(self, pid: int) -> None:
        for entry in self._active:
            try:
                entry.source.watch(pid)
            except Exception:
                log.exception("telemetry source %s failed to watch pid %d", entry.status.name, pid)

    def _loop(self) -> None:
        start_cpu = time.thread_time()
        assert self.t0 is not None
        tick = 1
        while True:
            delay = self.t0 + tick * self.interval_s - self.clock()
            # A timed acquire of a lock that only __exit__ releases: a sleep that a stop ends
            # at once. time.sleep cannot be interrupted, so each job's stop waited out the rest
            # of its interval (~65 ms of a 100 ms tick per job, issue 15); Event.wait can, but
            # costs ~100 µs of CPU per wake-up against ~55-70 µs for this or time.sleep (2-core
            # VM), and wake-ups are most of the sampler's cost.
            self._wake.acquire(timeout=max(0.0, delay))
            if self._stop.is_set():
                break
            now = self.clock()
            self._take(now, count_cpu=False)
            # Fixed schedule: after a late sample, skip the slots already past.
            tick = max(tick + 1, int((now - self.t0) / self.interval_s) + 1)
        with self._lock:
            self._cpu_s += time.thread_time() - start_cpu

    def _take(self, now: float, count_cpu: bool = True) -> None:
        start_cpu = time.thread_time()
        with self._lock:
            values: dict[str, float] = {}
            for entry in self._active:
                if entry.failures >= _MAX_FAILURES_IN_A_ROW:
                    continue
                try:
                    readings = entry.source.sample(now)
                except Exception as exc:
                    entry.failures += 1
                    level = (
                        logging.ERROR
                        if entry.failures == _MAX_FAILURES_IN_A_ROW
                        else logging.WARNING
                    )
                    log.log(
                        level, "telemetry source %s failed to sample: %r", entry.status.name, exc
                    )
                    continue
                entry.failures = 0
                entry.produced = entry.produced or bool(readings)
                for name, value in readings.items():
                    # Sources are in precedence order: the first to give a metric keeps it.
                    values.setdefault(name, value)
            assert self.t0 is not None
            self._samples.append(Sample(now - self.t0, values))
            if count_cpu:
                self._cpu_s += time.thread_time() - start_cpu
