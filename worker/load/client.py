"""The load client: one asyncio event loop streaming every request of a load run over httpx.

Example::

    endpoint = Endpoint("http://127.0.0.1:8080", extra={"cache_prompt": False})
    run = run_load(spec, endpoint, prompt_for=lambda n: pool[:n], prompt_tokens=512,
                   gen_tokens=128, deadline=time.monotonic() + 600)

Each request is an OpenAI-style streamed completion (`/v1/completions`, or
`/v1/chat/completions`) with `stream_options.include_usage`. The stream shape follows
llama.cpp's server (ggml-org/llama.cpp tools/server/server-task.cpp, as vendored in
llama-cpp-python 0.3.36, llama.cpp commit 0c1e57098bba43ac29e6e3b677cdceebdd22334f):
one `data:` event per generated token with `finish_reason: null` (its text may be empty while a
UTF-8 character is split), a last event with `finish_reason`, `usage` and llama.cpp's own
`timings`, then `data: [DONE]`; an error mid-stream is a `data: {"error": ...}` event.

The client times each request (sent, every token event, end) with `time.perf_counter`; a
request that fails (HTTP status, connection, a broken stream, a timeout) is recorded with its
kind and reason and counted, never dropped. It also watches itself (`ClientCheck`): the event
loop thread's CPU time, the lateness of a 10 ms ticker, and in an open loop how late each
arrival was sent. The run is flagged `client_bound` when
- the loop thread used >= 80% of a core (one loop cannot use more: it was close to saturated),
- the ticker's p99 lateness is over a quarter of the median inter-token latency (token times
  then carry the client's own delay), or
- (open loop) the p99 send lateness is over 10% of the mean gap between arrivals.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from jobs.load import ClientCheck, Distribution, ErrorKind, LoadRequest, LoadRun, LoadSpec
from worker.load.plan import Lengths, Planned, open_loop_plan
from worker.load.summary import distribution, summarize

TICK_S = 0.010
LOOP_CPU_LIMIT = 0.8
LAG_TO_ITL_LIMIT = 0.25
DISPATCH_LATE_LIMIT = 0.10
_ERROR_TEXT_CHARS = 300

PromptFor = Callable[[int], "list[int] | str"]


@dataclass(frozen=True)
class Endpoint:
    """Where and how to send: the server's base URL and an OpenAI-style streaming route."""

    url: str
    path: str = "/v1/completions"
    model: str | None = None
    # Fields a server takes beyond OpenAI's (llama-server: cache_prompt, ignore_eos, seed).
    extra: dict[str, Any] = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)

    def body(self, prompt: list[int] | str, gen_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "max_tokens": gen_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.0,
            **self.extra,
        }
        if self.path.endswith("/chat/completions"):
            if not isinstance(prompt, str):
                raise ValueError("a chat route takes a text prompt, not token ids")
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if self.model is not None:
            body["model"] = self.model
        return body


class _Failed(Exception):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _carries_token(event: dict[str, Any]) -> bool:
    """A streamed event that delivered generated output (see the module docstring)."""
    for choice in event.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if "text" in choice:  # /v1/completions: llama-server sends one event per token
            if choice.get("finish_reason") is None or choice.get("text"):
                return True
        delta = choice.get("delta") or {}
        if isinstance(delta, dict) and any(
            delta.get(k) for k in ("content", "reasoning_content", "reasoning")
        ):
            return True
    return False


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class _Stream:
    """What one response stream delivered, as it arrives."""

    chunks: list[float] = field(default_factory=list)  # perf_counter of each token event
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def feed(self, payload: str, now: float) -> bool:
        """One `data:` payload; True at the end of the stream."""
        if payload == "[DONE]":
            return True
        try:
            event = json.loads(payload)
        except ValueError:
            raise _Failed("protocol", f"not JSON: {payload[:100]!r}") from None
        if not isinstance(event, dict):
            raise _Failed("protocol", f"not a JSON object: {payload[:100]!r}")
        if "error" in event:
            raise _Failed("server", f"server error: {str(event['error'])[:_ERROR_TEXT_CHARS]}")
        if _carries_token(event):
            self.chunks.append(now)
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        if isinstance(event.get("timings"), dict):
            self.timings = {
                k: float(v)
                for k, v in event["timings"].items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
        return False


async def _stream(
    client: httpx.AsyncClient, endpoint: Endpoint, body: dict[str, Any], got: _Stream
) -> None:
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    async with client.stream("POST", endpoint.path, json=body, headers=headers) as resp:
        if resp.status_code // 100 != 2:
            text = (await resp.aread())[:_ERROR_TEXT_CHARS]
            raise _Failed("http", f"HTTP {resp.status_code}: {text!r}")
        async for line in resp.aiter_lines():
            if line.startswith("data:") and got.feed(line[5:].strip(), time.perf_counter()):
                return
    raise _Failed("protocol", "the stream ended without `data: [DONE]`")


async def send(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    planned: Planned,
    prompt: list[int] | str,
    *,
    t0: float,
    timeout_s: float,
) -> LoadRequest:
    """One request, timed; a failure is a record with its kind, not an exception."""
    got = _Stream()
    sent = time.perf_counter()
    error: _Failed | None = None
    try:
        async with asyncio.timeout(timeout_s):
            await _stream(client, endpoint, endpoint.body(prompt, planned.gen_tokens), got)
        if not got.chunks:
            raise _Failed("protocol", "the stream carried no token")
    except _Failed as exc:
        error = exc
    except (TimeoutError, httpx.TimeoutException):
        error = _Failed("timeout", f"no complete answer within {timeout_s:.1f} s")
    except httpx.HTTPError as exc:
        error = _Failed("connection", f"{type(exc).__name__}: {exc}"[:_ERROR_TEXT_CHARS])
    end = time.perf_counter()
    usage, timings = got.usage, got.timings
    output = _count(usage.get("completion_tokens")) or _count(timings.get("predicted_n"))
    prompt_n = _count(usage.get("prompt_tokens")) or _count(timings.get("prompt_n"))
    return LoadRequest(
        index=planned.index,
        scheduled_s=planned.due_s,
        sent_s=sent - t0,
        prompt_tokens=prompt_n or planned.prompt_tokens,
        gen_tokens_requested=planned.gen_tokens,
        output_tokens=0 if error else (output or len(got.chunks)),
        ttft_s=got.chunks[0] - sent if got.chunks and not error else None,
        e2e_s=end - sent,
        chunk_s=[c - sent for c in got.chunks],
        server_timings=timings,
        error=str(error) if error else None,
        error_kind=error.kind if error else None,
    )


@dataclass
class _Run:
    """State shared by the coroutines of one run."""

    spec: LoadSpec
    endpoint: Endpoint
    prompt_for: PromptFor
    deadline: float  # time.monotonic()
    client: httpx.AsyncClient
    t0: float = 0.0
    records: list[LoadRequest] = field(default_factory=list)

    def timeout_s(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the job's time limit passed during the load run")
        limit = self.spec.request_timeout_s
        return min(left, limit) if limit is not None else left

    async def send(self, planned: Planned) -> LoadRequest:
        prompt = self.prompt_for(planned.prompt_tokens)
        return await send(self.client, self.endpoint, planned, prompt, t0=self.t0,
                          timeout_s=self.timeout_s())  # fmt: skip


async def _closed(run: _Run, lengths: Lengths, users: int, count: int | None) -> None:
    """`users` streams, each sending its next request when the last one ended."""
    indexes = itertools.count()
    stop_at = None if run.spec.duration_s is None else time.perf_counter() + run.spec.duration_s

    async def user() -> None:
        while True:
            index = next(indexes)  # drawn with its lengths before any await: deterministic
            if (count is not None and index >= count) or (
                stop_at is not None and time.perf_counter() >= stop_at
            ):
                return
            run.records.append(await run.send(Planned(index, *lengths.next())))

    await asyncio.gather(*(user() for _ in range(users)))


async def _open(run: _Run, plan: list[Planned]) -> None:
    """Each request sent when its arrival is due, whatever the earlier ones are doing."""
    tasks = []
    for planned in plan:
        assert planned.due_s is not None
        # Never asleep past the job's limit: a slow rate's next arrival may be due hours later.
        while (delay := run.t0 + planned.due_s - time.perf_counter()) > 0:
            await asyncio.sleep(min(delay, max(run.timeout_s(), 0.001)))
        run.timeout_s()  # past the job's limit: stop sending
        tasks.append(asyncio.create_task(run.send(planned)))
    run.records.extend(await asyncio.gather(*tasks))


async def _ticker(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(TICK_S)
        lags.append(max(0.0, time.perf_counter() - before - TICK_S))


def _check(
    wall_s: float,
    loop_cpu_s: float,
    process_cpu_s: float,
    lags: list[float],
    run: _Run,
    gaps: Distribution | None,
) -> ClientCheck:
    """The client's self-check (the rules are in the module docstring)."""
    lag = distribution(lags)
    late = distribution(
        [max(0.0, r.sent_s - r.scheduled_s) for r in run.records if r.scheduled_s is not None]
    )
    fraction = loop_cpu_s / wall_s if wall_s > 0 else 0.0
    reasons = []
    if fraction >= LOOP_CPU_LIMIT:
        reasons.append(f"the event loop used {fraction:.0%} of a core")
    if lag is not None and gaps is not None and lag.p99 > LAG_TO_ITL_LIMIT * gaps.p50:
        reasons.append(
            f"event-loop lag p99 {lag.p99 * 1000:.2f} ms is over {LAG_TO_ITL_LIMIT:.0%} of the "
            f"median inter-token latency {gaps.p50 * 1000:.2f} ms"
        )
    rate = run.spec.request_rate
    if late is not None and rate is not None and late.p99 > DISPATCH_LATE_LIMIT / rate:
        reasons.append(
            f"arrivals were sent up to {late.p99 * 1000:.1f} ms late (p99), over "
            f"{DISPATCH_LATE_LIMIT:.0%} of the mean gap between arrivals"
        )
    return ClientCheck(
        wall_s=wall_s,
        loop_cpu_s=loop_cpu_s,
        process_cpu_s=process_cpu_s,
        loop_cpu_fraction=fraction,
        loop_lag_s=lag,
        dispatch_late_s=late,
        client_bound=bool(reasons),
        reasons=reasons,
    )


async def _run_load(
    spec: LoadSpec,
    endpoint: Endpoint,
    prompt_for: PromptFor,
    prompt_tokens: int,
    gen_tokens: int,
    deadline: float,
) -> LoadRun:
    # No environment proxy between a client and a server on the same box, no connection cap
    # (an open loop must not queue in the client), no pool of idle connections to reuse
    # across requests (each request is a user).
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=endpoint.url, trust_env=False, limits=limits, timeout=None
    ) as client:
        run = _Run(spec, endpoint, prompt_for, deadline, client)
        run.t0 = time.perf_counter()
        # Warm-up: the mean lengths, as many at once as the server has slots.
        warm = min(spec.warmup_requests, spec.server_slots())
        fixed = Lengths(spec, prompt_tokens, gen_tokens, spread=False)
        await _closed(run, fixed, warm, spec.warmup_requests)
        warmups, run.records = run.records, []
        lags: list[float] = []
        stop = asyncio.Event()
        ticker = asyncio.create_task(_ticker(lags, stop))
        cpu0, proc0, t0 = time.thread_time(), time.process_time(), time.perf_counter()
        run.t0 = t0
        try:
            if spec.concurrency is not None:
                lengths = Lengths(spec, prompt_tokens, gen_tokens)
                await _closed(run, lengths, spec.concurrency, spec.requests)
            else:
                await _open(run, open_loop_plan(spec, prompt_tokens, gen_tokens))
        finally:
            stop.set()
            await ticker
        wall = time.perf_counter() - t0
        loop_cpu, process_cpu = time.thread_time() - cpu0, time.process_time() - proc0
    records = sorted(run.records, key=lambda r: r.index)
    summary = summarize(spec, records, warmup_requests=len(warmups),
                        warmup_errors=sum(not r.ok for r in warmups))  # fmt: skip
    check = _check(wall, loop_cpu, process_cpu, lags, run, summary.itl_s)
    return LoadRun(summary=summary, client=check, records=records)


def run_load(
    spec: LoadSpec,
    endpoint: Endpoint,
    *,
    prompt_for: PromptFor,
    prompt_tokens: int,
    gen_tokens: int,
    deadline: float,
) -> LoadRun:
    """One load run (warm-up, then the measured requests) on a fresh event loop in this thread.

    Raises TimeoutError when the job's `deadline` (time.monotonic()) passes before the run ends.
    """
    return asyncio.run(_run_load(spec, endpoint, prompt_for, prompt_tokens, gen_tokens, deadline))
