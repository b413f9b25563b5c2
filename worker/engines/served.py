"""Engines that talk to an inference server someone else runs (Ollama, any OpenAI-compatible
server): the worker config names its `url` and the served model ids; the adapter streams
requests, times them on the client, and keeps whatever the server says about itself.

A subclass implements `request` (one streamed request) and may add `details` (what the server
reports about the loaded model and runtime).
"""

from __future__ import annotations

import base64
import itertools
import mimetypes
import time
from abc import abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil  # type: ignore[import-untyped]  # no stubs installed; calls are checked by tests

from jobs.progress import Phase
from jobs.result import BackendCheck, EngineInfo, Measurement, RequestSample, Status
from jobs.spec import JobSpec
from jobs.telemetry import PhaseWindow
from worker.engines.base import Engine, EngineOutcome, RunTarget
from worker.engines.http_stream import HttpError
from worker.engines.timing import measurements
from worker.progress import last_tokens_per_s

# Host names of this box in a url: a server there is one whose process (and CLI) orch can reach.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# Words that most tokenizers keep whole, so N words are close to N tokens; the server's own
# prompt token count is what gets recorded.
_WORDS = (
    "the of and to in is that it was for on are as with his they at be this from have or by one "
    "had not but what all were when we there can an your which their said if do will each about "
    "how up out them then she many some so these would other into has more her two like him see"
).split()


def image_data_url(path: Path) -> str:
    """`data:image/png;base64,...`: how OpenAI-style APIs take a local image."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def chat_body(job: JobSpec, target: RunTarget, prompt: str) -> dict[str, Any]:
    """An OpenAI-style chat request for the job: greedy, seeded, `gen_tokens` long."""
    return {
        "model": target.served_model,
        "messages": [user_message(prompt, target.image)],
        "max_tokens": job.workload.gen_tokens,
        "temperature": 0,
        "seed": 42,
    }


def user_message(prompt: str, image: Path | None) -> dict[str, Any]:
    """An OpenAI chat message: plain text, or text plus the image as a data URL."""
    if image is None:
        return {"role": "user", "content": prompt}
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": {"url": image_data_url(image)}},
        ],
    }


def listening_pid(url: str) -> int | None:
    """The process on this box that listens on a loopback `url`'s port (the server the engine
    talks to), or None: a remote server, or one this user may not see (another user's process,
    no /proc)."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            pid = conn.pid  # None when the process is not ours to see
            return int(pid) if pid is not None else None
    return None


def synthetic_prompt(n_tokens: int, nonce: int) -> str:
    """About `n_tokens` tokens of plain text; `nonce` makes each request's prefix unique, so no
    server answers a repetition from its prompt cache."""
    words = list(itertools.islice(itertools.cycle(_WORDS), max(1, n_tokens - 4)))
    return f"Run {nonce}: " + " ".join(words)


class ServedEngine(Engine):
    """Base for engines behind a URL; `backend` is a label checked against the server runtime."""

    @abstractmethod
    def request(
        self, job: JobSpec, target: RunTarget, prompt: str, deadline: float
    ) -> tuple[RequestSample, list[PhaseWindow], dict[str, Any]]:
        """One request, finished before `deadline` (time.monotonic) or TimeoutError: its
        timing, phase windows, and the server's final payload."""

    def details(self, job: JobSpec, target: RunTarget) -> tuple[dict[str, Any], str | None]:
        """What the server reports (model, runtime, memory); and a problem that fails the job."""
        return {}, None

    def backend_check(self, job: JobSpec, details: dict[str, Any]) -> BackendCheck | None:
        """What the server says the model ran on, checked against the job's backend (None: it
        says nothing that can be checked)."""
        return None

    def failed(
        self, job: JobSpec, target: RunTarget, error: str, *, load_failed: bool = False
    ) -> EngineOutcome:
        info = EngineInfo(name=self.name, backend=job.backend, binary=target.url or "")
        return EngineOutcome(Status.LOAD_FAILED if load_failed else Status.ERROR, info, error=error)

    def run(self, job: JobSpec, target: RunTarget) -> EngineOutcome:
        info = EngineInfo(name=self.name, backend=job.backend, binary=target.url or "")
        if target.url is None or target.served_model is None:
            return EngineOutcome(Status.ERROR, info, error=f"{self.name} needs `url` and `models`")
        server = listening_pid(target.url)
        if server is not None:
            # The server's process tree is the engine: its CPU and memory are this job's, not
            # "another process" (telemetry and the disturbance check follow it).
            target.on_process(server)
        work = job.workload
        deadline = time.monotonic() + target.timeout_s
        samples: list[RequestSample] = []
        phases: list[PhaseWindow] = []
        first_payload: dict[str, Any] = {}
        try:
            for i in range(work.warmup_runs + job.repetitions):
                # A unique prefix per request, fixed prompts included: no repetition may be
                # answered from the server's prompt cache.
                if work.prompt_text:
                    prompt = f"[run {i + 1}] {work.prompt_text}"
                else:
                    prompt = synthetic_prompt(work.prompt_tokens, i + 1)
                if i < work.warmup_runs:
                    target.on_phase(Phase.WARMUP)
                else:
                    rate = last_tokens_per_s(samples)
                    k = i - work.warmup_runs + 1
                    target.on_phase(Phase.REPETITION, k, job.repetitions, rate)
                sample, windows, payload = self.request(job, target, prompt, deadline)
                if i == 0:
                    first_payload = payload
                if i >= work.warmup_runs:
                    samples.append(sample)
                    phases += windows
            details, problem = self.details(job, target)
        except TimeoutError as exc:
            error = f"{self.name}: past the job's {target.timeout_s:.0f} s ({exc})"
            return EngineOutcome(Status.TIMEOUT, info, error=error, requests=samples)
        except (HttpError, OSError, ValueError, KeyError) as exc:
            return EngineOutcome(Status.ERROR, info, error=f"{self.name} at {target.url}: {exc}")
        info = info.model_copy(update={"details": details})
        if problem:
            return EngineOutcome(Status.ERROR, info, error=problem, requests=samples)
        return EngineOutcome(
            Status.OK,
            info,
            measurements=self.measurements(job, samples),
            phases=phases,
            requests=samples,
            load_time_s=self.load_time_s(first_payload),
            backend_check=self.backend_check(job, details),
        )

    def measurements(self, job: JobSpec, samples: list[RequestSample]) -> list[Measurement]:
        """pp and tg of the measured requests; an engine whose replies can stop short of the
        job's length (Ollama: no ignore_eos) overrides this to keep them out of tg."""
        return measurements(samples, self.prefill_rate, self.decode_rate)

    def prefill_rate(self, sample: RequestSample) -> float | None:
        """Prompt tokens/s as the server measured it, or None (the client cannot separate it)."""
        return None

    def decode_rate(self, sample: RequestSample) -> float | None:
        """Generation tokens/s as the server measured it, or None: tg then comes from the
        client's decode timing, which a client starved on a busy box can lose (a burst)."""
        return None

    def load_time_s(self, first_payload: dict[str, Any]) -> float | None:
        return None
