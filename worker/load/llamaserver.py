"""A load workload on a running llama-server: checks, prompts, `repetitions` load runs.

The engine (worker/engines/llama_server.py) starts the server with `-np` = the load's slots and
calls `llama_server_load`. Requests go to `/v1/completions` with the prompt as token ids from
the server's own `/tokenize` (so a request is exactly its drawn length), `cache_prompt` off (every
request prefills) and `ignore_eos` on (every request generates its drawn length); a fixed
`prompt_text` is sent as text instead. The server's per-slot context (`/props`
`default_generation_settings.n_ctx`: llama.cpp splits `-c` over the slots unless its KV cache is
unified) must hold the longest request the workload can draw, or the job stops before sending.

This module imports nothing from worker.engines, which imports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from jobs.load import LoadResult, LoadRun, LoadSpec, longest
from jobs.spec import JobSpec
from jobs.telemetry import PhaseWindow
from worker.load.client import Endpoint, run_load

ENDPOINT = "/v1/completions"
# A job's result keeps at most this many request records and token times over all its runs
# (about 1 MB of JSON); the summaries always cover every request.
MAX_RECORDS = 4000
MAX_CHUNK_TIMES = 100_000
_FILLER = (
    "The quick brown fox jumps over the lazy dog while the old clock on the wall keeps time "
    "and a small boat drifts along the quiet river under a pale morning sky. "
)


class LoadRefused(ValueError):
    """The load cannot run on this server as started (it names what to change)."""


def _json(url: str, method: str, path: str, body: Any = None) -> Any:
    try:
        with httpx.Client(base_url=url, trust_env=False, timeout=60) as client:
            resp = client.request(method, path, json=body)
            resp.raise_for_status()
            return resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        # An OSError: the engine's "a request failed" path, with the server's log.
        raise ConnectionError(f"{method} {path}: {exc}") from exc


def token_pool(url: str, n: int) -> list[int]:
    """At least `n` token ids of plain text, from the server's own tokenizer."""
    text = _FILLER
    while True:
        tokens: list[int] = _json(url, "POST", "/tokenize", {"content": text})["tokens"]
        if len(tokens) >= n or not tokens:
            return tokens
        text += _FILLER * max(1, n // len(tokens))


def _check_server(spec: LoadSpec, props: dict[str, Any], prompt_n: int, gen_n: int) -> int | None:
    """The server's per-slot context; refuses a slot count or context that cannot hold the
    workload."""
    slots = props.get("total_slots")
    if isinstance(slots, int) and slots != spec.server_slots():
        raise LoadRefused(f"the server runs {slots} slots, the workload asks for "
                          f"{spec.server_slots()}")  # fmt: skip
    n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
    if isinstance(n_ctx, int) and prompt_n + gen_n > n_ctx:
        raise LoadRefused(
            f"a request can need {prompt_n} prompt + {gen_n} generated tokens, but each of the "
            f"server's {spec.server_slots()} slots holds {n_ctx} (llama-server splits the "
            "context over its slots): raise the job's context or lower the lengths or slots"
        )
    return n_ctx if isinstance(n_ctx, int) else None


@dataclass
class RecordBudget:
    """How many request records and token times a job's result may still keep."""

    records: int = MAX_RECORDS
    chunk_times: int = MAX_CHUNK_TIMES

    def bound(self, run: LoadRun) -> LoadRun:
        """`run` with the records that fit (first ones first); its summary is untouched."""
        kept, dropped_times = [], False
        for record in run.records[: self.records]:
            if len(record.chunk_s) > self.chunk_times:
                record = record.model_copy(update={"chunk_s": []})
                dropped_times = True
            self.chunk_times -= len(record.chunk_s)
            kept.append(record)
        self.records -= len(kept)
        return run.model_copy(update={
            "records": kept,
            "records_dropped": len(run.records) - len(kept),
            "chunk_times_dropped": dropped_times,
        })  # fmt: skip


def llama_server_load(
    job: JobSpec, url: str, deadline: float, windows: list[PhaseWindow] | None = None
) -> LoadResult:
    """Run `job`'s load workload `job.repetitions` times against the server at `url`.

    Each load run is appended to `windows` as a `run` phase (monotonic clock, the sampler's
    time base; tokens: the run's output tokens), so the telemetry of each load level (GPU busy,
    copy engine, power, memory) is summarised over the load itself and reports show it per row.
    """
    work = job.workload
    spec = work.load
    if spec is None:
        raise ValueError("not a load workload")
    prompt_max = longest(work.prompt_tokens, spec.prompt_tokens_stddev)
    gen_max = longest(work.gen_tokens, spec.gen_tokens_stddev)
    n_ctx = _check_server(spec, _json(url, "GET", "/props"), prompt_max, gen_max)
    if work.prompt_text is not None:
        text = work.prompt_text

        def prompt_for(n: int) -> list[int] | str:
            return text
    else:
        pool = token_pool(url, prompt_max)
        if len(pool) < prompt_max:
            raise LoadRefused("the server's tokenizer gave no tokens for the filler text")

        def prompt_for(n: int) -> list[int] | str:
            return pool[:n]

    endpoint = Endpoint(
        url, ENDPOINT, extra={"cache_prompt": False, "ignore_eos": True, "seed": 42}
    )
    budget = RecordBudget()
    runs = []
    for _ in range(job.repetitions):
        if time.monotonic() >= deadline:
            raise TimeoutError("the job's time limit passed between load runs")
        started = time.monotonic()
        run = run_load(spec, endpoint, prompt_for=prompt_for, prompt_tokens=work.prompt_tokens,
                       gen_tokens=work.gen_tokens, deadline=deadline)  # fmt: skip
        if windows is not None:
            windows.append(PhaseWindow(phase="run", start_s=started, end_s=time.monotonic(),
                                       tokens=run.summary.output_tokens))  # fmt: skip
        runs.append(budget.bound(run))
    return LoadResult(endpoint=ENDPOINT, slots=spec.server_slots(), slot_context=n_ctx, runs=runs)
