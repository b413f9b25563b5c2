"""What a load run will send, decided before it starts: arrival times and request lengths.

Everything is drawn from generators seeded by the workload's `seed`, one stream per purpose, so
the same workload sends the same requests at the same offsets on every box, and changing the
length spread does not move the arrivals.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from jobs.load import LoadSpec, longest


@dataclass(frozen=True)
class Planned:
    """One request to send: its lengths, and (open loop) when it is due, in seconds."""

    index: int
    prompt_tokens: int
    gen_tokens: int
    due_s: float | None = None


def poisson_arrivals(
    rate: float, seed: int, *, count: int | None = None, duration_s: float | None = None
) -> list[float]:
    """Arrival offsets of a Poisson process at `rate` per second: exponential gaps with mean
    1 / rate, cumulated; `count` arrivals, or every arrival before `duration_s`.

    >>> poisson_arrivals(2.0, 7, count=3) == poisson_arrivals(2.0, 7, count=3)
    True
    """
    if (count is None) == (duration_s is None):
        raise ValueError("give count or duration_s")
    rng = random.Random(f"arrivals-{seed}")
    out: list[float] = []
    now = 0.0
    while True:
        now += rng.expovariate(rate)
        if (count is not None and len(out) >= count) or (
            duration_s is not None and now >= duration_s
        ):
            return out
        out.append(now)


class Lengths:
    """Prompt and output lengths: fixed, or normal around the workload's mean, rounded and
    kept within [1, mean + LENGTH_SPREAD_SIGMAS * stddev]."""

    def __init__(
        self, spec: LoadSpec, prompt_tokens: int, gen_tokens: int, *, spread: bool = True
    ) -> None:
        seed = spec.seed
        spreads = (spec.prompt_tokens_stddev, spec.gen_tokens_stddev) if spread else (0.0, 0.0)
        prompt_sd, gen_sd = spreads
        self._prompt = (prompt_tokens, prompt_sd, random.Random(f"prompt-{seed}"))
        self._gen = (gen_tokens, gen_sd, random.Random(f"gen-{seed}"))

    @staticmethod
    def _draw(mean: int, stddev: float, rng: random.Random) -> int:
        if stddev == 0:
            return mean
        return max(1, min(longest(mean, stddev), round(rng.gauss(mean, stddev))))

    def next(self) -> tuple[int, int]:
        return self._draw(*self._prompt), self._draw(*self._gen)


def open_loop_plan(spec: LoadSpec, prompt_tokens: int, gen_tokens: int) -> list[Planned]:
    """An open loop's measured requests: `requests` Poisson arrivals, or all before
    `duration_s`, each with its drawn lengths."""
    assert spec.request_rate is not None
    due = poisson_arrivals(
        spec.request_rate, spec.seed, count=spec.requests, duration_s=spec.duration_s
    )
    lengths = Lengths(spec, prompt_tokens, gen_tokens)
    return [Planned(i, *lengths.next(), due_s=at) for i, at in enumerate(due)]
