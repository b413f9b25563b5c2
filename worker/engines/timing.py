"""Client-side timing of one streamed request, shared by every server engine.

Example::

    clock = StreamClock.start()
    for event in stream_sse(...):
        if carries_a_token(event):
            clock.token()
    clock.finish()
    sample = clock.sample(prompt_tokens=64, gen_tokens=32, server_timings={...})
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from jobs.result import Measurement, RequestSample
from jobs.telemetry import PhaseWindow


@dataclass
class StreamClock:
    """Times of the streamed events that carried output (tokens, or reasoning tokens)."""

    sent: float
    deadline: float | None = None
    token_times: list[float] = field(default_factory=list)
    counts: list[int | None] = field(default_factory=list)  # tokens so far, where reported
    done: float | None = None

    @classmethod
    def start(cls, deadline: float | None = None) -> StreamClock:
        return cls(time.monotonic(), deadline)

    def token(self, tokens_so_far: int | None = None) -> None:
        """An event with output arrived; `tokens_so_far` when the server says (llama-server
        does: an event can hold several tokens, or none while a UTF-8 character is split)."""
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise TimeoutError("the job's time limit passed while tokens were streaming")
        self.token_times.append(now)
        self.counts.append(tokens_so_far)

    def remaining_s(self) -> float:
        """Seconds left before the deadline (at least 1: a socket timeout of 0 means none)."""
        if self.deadline is None:
            return 3600.0
        return max(1.0, self.deadline - time.monotonic())

    def finish(self) -> None:
        self.done = time.monotonic()

    def sample(
        self,
        *,
        prompt_tokens: int,
        gen_tokens: int,
        server_timings: dict[str, float] | None = None,
        cached_prompt: bool = False,
    ) -> RequestSample:
        """`gen_tokens` is what the server says it generated.

        Decode speed counts the tokens after the first event over the time after it: from the
        server's running count where it gives one, else assuming tokens spread evenly over
        events. ITL percentiles are gaps between streamed events.
        """
        if not self.token_times or self.done is None:
            raise ValueError("no token was streamed")
        first, last = self.token_times[0], self.token_times[-1]
        gaps = [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]
        if self.counts[0] is not None and self.counts[-1] is not None:
            decoded = float(self.counts[-1] - self.counts[0])
        else:
            decoded = gen_tokens - gen_tokens / len(self.token_times)
        burst = _burst(last - first, decoded, server_timings or {})
        return RequestSample(
            prompt_tokens=prompt_tokens,
            gen_tokens=gen_tokens,
            ttft_s=first - self.sent,
            e2e_s=self.done - self.sent,
            decode_tokens_per_s=(
                decoded / (last - first) if last > first and decoded > 0 and not burst else None
            ),
            itl_s=percentiles(gaps),
            server_timings=server_timings or {},
            cached_prompt=cached_prompt,
            stream_burst=burst,
        )

    def windows(self, prompt_tokens: int, gen_tokens: int) -> list[PhaseWindow]:
        """Prefill: request sent -> first token; decode: first token -> stream end."""
        if not self.token_times or self.done is None:
            return []
        first = self.token_times[0]
        return [
            PhaseWindow(phase="prefill", start_s=self.sent, end_s=first, tokens=prompt_tokens),
            PhaseWindow(phase="decode", start_s=first, end_s=self.done, tokens=gen_tokens),
        ]


# The client's decode span may be shorter than the server's (timestamps differ by transport
# jitter), but not by this factor: then the tokens were held back and delivered together.
_BURST_FRACTION = 0.5


def _burst(client_span_s: float, decoded: float, server_timings: dict[str, float]) -> bool:
    """The stream arrived in a burst: the client saw `decoded` tokens over far less time than
    the server (llama.cpp's `predicted_ms` for `predicted_n` tokens) spent making them."""
    made_ms, made_n = server_timings.get("predicted_ms"), server_timings.get("predicted_n")
    if not made_ms or not made_n or decoded <= 0:
        return False
    server_span_s = made_ms / 1000 * decoded / made_n
    return client_span_s < _BURST_FRACTION * server_span_s


def percentiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98]}


def server_prefill_rate(sample: RequestSample) -> float | None:
    """llama.cpp's own prompt tokens/s (`timings.prompt_per_second`), when the server gave it:
    the client cannot separate prefill from the first decode step and transport."""
    rate = sample.server_timings.get("prompt_per_second")
    return float(rate) if rate else None


def server_decode_rate(sample: RequestSample) -> float | None:
    """llama.cpp's own generation tokens/s (`timings.predicted_per_second`): what the engine
    did, which an HTTP client starved on a busy box cannot distort."""
    rate = sample.server_timings.get("predicted_per_second")
    return float(rate) if rate else None


def measurements(
    samples: list[RequestSample],
    prefill_rate: Callable[[RequestSample], float | None],
    decode_rate: Callable[[RequestSample], float | None] | None = None,
) -> list[Measurement]:
    """pp from `prefill_rate` (server-side figures); tg from `decode_rate` when the engine
    gives it for every request (one source per cell, never a mix), else from the client's
    decode timing."""
    if not samples:
        return []
    pp = [r for r in (prefill_rate(s) for s in samples) if r]
    engine_tg = [decode_rate(s) for s in samples] if decode_rate is not None else []
    if engine_tg and all(engine_tg):
        tg = [float(r) for r in engine_tg if r]
    else:
        tg = [s.decode_tokens_per_s for s in samples if s.decode_tokens_per_s]
    out = []
    if pp:
        out.append(Measurement(test="pp", n_prompt=samples[0].prompt_tokens, n_gen=0,
                               samples_ts=pp))  # fmt: skip
    if tg:
        out.append(Measurement(test="tg", n_prompt=0, n_gen=samples[0].gen_tokens,
                               samples_ts=tg))  # fmt: skip
    return out
