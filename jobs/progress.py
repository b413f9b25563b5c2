"""Live progress: what an agent is doing right now, as both sides of the queue read it.

Each agent keeps one key, `orch:progress:<host>`, holding a `Progress` as JSON. It writes it at
phase changes (cool-down, applying settings, loading, warm-up, repetition k of N, restoring,
idle), at most about once a second for repetitions, and its heartbeat writes it again with a
fresh TTL: an agent that died leaves a key that expires within PROGRESS_TTL_S, and a reader
never shows a dead box as busy. Nothing is written inside a timed request.

Anyone who can write to the broker can write this key, so `read_progress` bounds what it
reads (PROGRESS_MAX_BYTES) and turns anything malformed into None: `orch status` never fails
on it.

Example::

    client.set(progress_key("halo"), Progress(host="halo", phase=Phase.IDLE,
               phase_started_at=now, updated_at=now).model_dump_json(), ex=PROGRESS_TTL_S)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobs.protocol import ONLINE_WITHIN_S

PROGRESS_KEY = "orch:progress:{host}"
# Two missed heartbeats and the progress is gone: the same horizon as "online" (jobs/protocol).
PROGRESS_TTL_S = int(2 * ONLINE_WITHIN_S)
# A real progress record is about 300 bytes; anything far bigger was not written by an agent.
PROGRESS_MAX_BYTES = 4096
# Repetition updates closer together than this are held back (the latest one is written at the
# next phase change or heartbeat): a tiny model finishes hundreds of requests a second.
PROGRESS_MIN_INTERVAL_S = 1.0
# Bounds of a record's texts and counts: a writer (worker/progress.py) leaves out what exceeds
# them, so that what any job may carry (a long campaign name, many repetitions) never fails it.
PROGRESS_MAX_TEXT = 200
PROGRESS_MAX_COUNT = 1_000_000


class Phase(StrEnum):
    """Where an agent is in a job (or that it has none)."""

    IDLE = "idle"
    SETTINGS = "applying settings"
    COOLDOWN = "cool-down"
    LOADING = "loading"
    WARMUP = "warm-up"
    REPETITION = "repetition"  # k of N known: the engine loops over repetitions itself
    RUNNING = "running"  # N repetitions in one engine process (llama-bench): elapsed only
    RESTORING = "restoring settings"
    PUBLISHING = "publishing"


class Progress(BaseModel):
    """One agent's progress. Times are the broker's clock (seconds since the epoch), so a
    coordinator on another box can subtract its own broker reading from them."""

    model_config = ConfigDict(extra="ignore")

    host: str = Field(max_length=PROGRESS_MAX_TEXT)
    phase: Phase
    phase_started_at: float
    updated_at: float
    job_id: str | None = Field(default=None, max_length=PROGRESS_MAX_TEXT)
    campaign: str | None = Field(default=None, max_length=PROGRESS_MAX_TEXT)
    repetition: int | None = Field(default=None, ge=0, le=PROGRESS_MAX_COUNT)  # k, 1-based
    repetitions: int | None = Field(default=None, ge=0, le=PROGRESS_MAX_COUNT)  # N
    # Generation tokens/s of the last finished repetition, as the engine reported it; None
    # where the engine has no cheap live figure (llama-bench reports only at the end).
    tokens_per_s: float | None = Field(default=None, ge=0)

    def text(self, now: float) -> str:
        """`job 1a2b (campaign c): repetition 3 of 10, 12 s, 45.1 tokens/s (last repetition)`."""
        if self.phase is Phase.IDLE:
            return "idle"
        elapsed = max(0.0, now - self.phase_started_at)
        what = self.phase.value
        if self.phase is Phase.REPETITION and self.repetition and self.repetitions:
            what = f"repetition {self.repetition} of {self.repetitions}"
        elif self.phase is Phase.RUNNING and self.repetitions:
            what = f"running {self.repetitions} repetitions"
        job = f"job {self.job_id[:12]} ({self.campaign}): " if self.job_id else ""
        rate = (
            f", {self.tokens_per_s:.1f} tokens/s (last repetition)"
            if self.tokens_per_s is not None
            else ""
        )
        return f"{job}{what}, {elapsed:.0f} s{rate}"


def progress_key(host: str) -> str:
    return PROGRESS_KEY.format(host=host)


def parse_progress(raw: Any, host: str) -> Progress | None:
    """The progress in `raw` (bytes or str) if it is a well-formed one of `host`, else None."""
    if raw is None or not isinstance(raw, bytes | str) or len(raw) > PROGRESS_MAX_BYTES:
        return None
    try:
        progress = Progress.model_validate_json(raw)
    except (ValidationError, ValueError):
        return None
    return progress if progress.host == host else None


def read_progress(client: Any, host: str) -> Progress | None:
    """`host`'s progress from the broker, read at most PROGRESS_MAX_BYTES + 1 bytes deep: a
    huge value someone wrote is refused without being transferred whole."""
    import redis  # here: only a reader with a broker needs it

    key = progress_key(host)
    try:
        head = client.getrange(key, 0, PROGRESS_MAX_BYTES)
    except redis.ResponseError:  # WRONGTYPE: someone made the key a list or a hash
        return None
    return parse_progress(head or None, host)
