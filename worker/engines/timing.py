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
from dataclasses import dataclass, field

from jobs.result import RequestSample
from jobs.telemetry import PhaseWindow


@dataclass
class StreamClock:
    sent: float
    token_times: list[float] = field(default_factory=list)
    done: float | None = None

    @classmethod
    def start(cls) -> StreamClock:
        return cls(time.monotonic())

    def token(self) -> None:
        self.token_times.append(time.monotonic())

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
        """`gen_tokens` is what the server says it generated (events may carry several)."""
        if not self.token_times or self.done is None:
            raise ValueError("no token was streamed")
        first, last = self.token_times[0], self.token_times[-1]
        gaps = [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]
        return RequestSample(
            prompt_tokens=prompt_tokens,
            gen_tokens=gen_tokens,
            ttft_s=first - self.sent,
            e2e_s=self.done - self.sent,
            decode_tokens_per_s=(gen_tokens - 1) / (last - first) if last > first else None,
            itl_s=percentiles(gaps),
            server_timings=server_timings or {},
            cached_prompt=cached_prompt,
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


def percentiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98]}
