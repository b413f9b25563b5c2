"""The agent's live progress (jobs/progress.py): kept in memory, written to the broker at phase
changes and by the heartbeat.

The job thread calls `phase()` between the timed parts of a job (never inside a request): a
phase change hands the record to a writer thread (one small SET; the job thread never waits on
the broker, which may be slow or away); repetition updates closer together than
PROGRESS_MIN_INTERVAL_S only change the record in memory, and the next write carries the latest.
A broker error is logged once and never fails the job: progress is a view, the result is what
counts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from jobs.progress import (
    PROGRESS_MAX_COUNT,
    PROGRESS_MAX_TEXT,
    PROGRESS_MIN_INTERVAL_S,
    PROGRESS_TTL_S,
    Phase,
    Progress,
    progress_key,
)
from jobs.result import RequestSample

log = logging.getLogger("orch.worker")


class ProgressReporter:
    """One agent's progress record. `clock` gives the broker's time (seconds since the epoch);
    `redis` None keeps the record in memory only (a runner called without an agent)."""

    def __init__(self, redis: Any | None, host: str, clock: Callable[[], float] = time.time):
        self.redis = redis
        self.host = host
        self.clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        now = clock()
        self._record = Progress(host=host[:PROGRESS_MAX_TEXT], phase=Phase.IDLE,
                                phase_started_at=now, updated_at=now)  # fmt: skip
        self._written_at = 0.0  # time.monotonic() of the last write handed over
        self._warned = False
        self._queued = 0  # records handed to the writer thread, and of those written (or failed)
        self._done = 0
        self._writer: threading.Thread | None = None

    @property
    def record(self) -> Progress:
        return self._record

    def start_job(self, job_id: str, campaign: str) -> None:
        self._set(Phase.SETTINGS, job_id=job_id, campaign=campaign)

    def phase(
        self,
        phase: Phase | str,
        repetition: int | None = None,
        repetitions: int | None = None,
        tokens_per_s: float | None = None,
    ) -> None:
        """The job entered `phase` (RunTarget.on_phase). A new repetition of the same phase
        is written only if the last write is PROGRESS_MIN_INTERVAL_S old."""
        phase = Phase(phase)
        same = phase is self._record.phase
        rate = tokens_per_s if tokens_per_s is not None else self._record.tokens_per_s
        self._set(
            phase,
            repetition=repetition,
            repetitions=repetitions,
            tokens_per_s=rate if same or phase is Phase.REPETITION else None,
            keep_start=same and phase is not Phase.REPETITION,
            throttle=same,
        )

    def idle(self) -> None:
        self._set(Phase.IDLE)

    def refresh(self) -> None:
        """Write the record again (the heartbeat): its TTL starts over, and a held-back
        repetition update goes out."""
        with self._lock:
            self._record = self._record.model_copy(update={"updated_at": self.clock()})
            self._write()

    def _set(
        self,
        phase: Phase,
        *,
        job_id: str | None = None,
        campaign: str | None = None,
        repetition: int | None = None,
        repetitions: int | None = None,
        tokens_per_s: float | None = None,
        keep_start: bool = False,
        throttle: bool = False,
    ) -> None:
        with self._lock:
            now = self.clock()
            old = self._record
            if phase is Phase.IDLE:
                job_id = campaign = None
            elif job_id is None:
                job_id, campaign = old.job_id, old.campaign
            # Figures the record cannot hold are left out of the view: raising here would
            # fail the job over what `orch status` shows of it.
            self._record = Progress(
                host=old.host,
                phase=phase,
                phase_started_at=old.phase_started_at if keep_start else now,
                updated_at=now,
                job_id=_text(job_id),
                campaign=_text(campaign),
                repetition=_count(repetition),
                repetitions=_count(repetitions),
                tokens_per_s=_rate(tokens_per_s),
            )
            if throttle and time.monotonic() - self._written_at < PROGRESS_MIN_INTERVAL_S:
                return
            self._write()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the latest record handed over is written (or failed); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._done >= self._queued, timeout_s)

    def _write(self) -> None:
        """Hand the record to the writer thread (the caller holds the lock)."""
        if self.redis is None:
            return
        self._queued += 1
        self._written_at = time.monotonic()
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="orch-progress",
                                            daemon=True)  # fmt: skip
            self._writer.start()
        self._changed.notify_all()

    def _write_loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._done < self._queued)
                queued, body = self._queued, self._record.model_dump_json()
            try:
                self.redis.set(progress_key(self.host), body, ex=PROGRESS_TTL_S)  # type: ignore[union-attr]
            except Exception as exc:  # noqa: BLE001 - a dead writer would hide progress for good
                if not self._warned:
                    log.warning("could not publish progress (shown again once it can): %s", exc)
                    self._warned = True
            else:
                self._warned = False
            with self._changed:
                self._done = queued  # everything handed over so far is in what was written
                self._changed.notify_all()


def _text(value: str | None) -> str | None:
    return None if value is None else value[:PROGRESS_MAX_TEXT]


def _count(value: int | None) -> int | None:
    return value if value is not None and 0 <= value <= PROGRESS_MAX_COUNT else None


def _rate(value: float | None) -> float | None:
    """A tokens/s figure the record can hold: finite and not negative (a server may say NaN)."""
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def ignore_phase(
    phase: Phase | str,
    repetition: int | None = None,
    repetitions: int | None = None,
    tokens_per_s: float | None = None,
) -> None:
    """RunTarget.on_phase when nobody listens."""


def last_tokens_per_s(samples: list[RequestSample]) -> float | None:
    """Generation tokens/s of the last finished request: the server's own figure where it
    gave one (llama-server `timings.predicted_per_second`), else the client's decode timing."""
    if not samples:
        return None
    last = samples[-1]
    rate = last.server_timings.get("predicted_per_second")
    return float(rate) if rate is not None else last.decode_tokens_per_s
