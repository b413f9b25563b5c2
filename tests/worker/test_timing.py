"""Client-side stream timing: a stream that arrives in one burst is not a decode measurement."""

from __future__ import annotations

from jobs.result import RequestSample
from worker.engines.timing import StreamClock, measurements

# llama-server's own view of one request: 32 tokens made in 4 ms (8000 tokens/s)
SERVER = {"predicted_ms": 4.0, "predicted_n": 32.0, "prompt_per_second": 50000.0}


def _clock(token_times_ms: list[float], done_ms: float) -> StreamClock:
    clock = StreamClock(sent=0.0)
    clock.token_times = [t / 1000 for t in token_times_ms]
    clock.counts = [i + 1 for i in range(len(token_times_ms))]
    clock.done = done_ms / 1000
    return clock


def test_a_stream_seen_as_it_is_made_measures_decode() -> None:
    clock = _clock([2.0 + i * 0.125 for i in range(32)], done_ms=6.2)  # 8000 tokens/s
    sample = clock.sample(prompt_tokens=64, gen_tokens=32, server_timings=SERVER)
    assert not sample.stream_burst
    assert sample.decode_tokens_per_s is not None
    assert round(sample.decode_tokens_per_s) == 8000


def test_a_stream_delivered_in_one_burst_is_flagged_and_not_a_decode_figure() -> None:
    # every token arrives within 0.2 ms, after the server spent 4 ms making them (seen on a
    # loaded 2-core box: the HTTP thread got no CPU until generation had finished)
    clock = _clock([6.0 + i * 0.006 for i in range(32)], done_ms=6.3)
    sample = clock.sample(prompt_tokens=64, gen_tokens=32, server_timings=SERVER)
    assert sample.stream_burst and sample.decode_tokens_per_s is None
    # tg comes only from requests that timed the engine; pp is the server's own figure
    steady = _clock([2.0 + i * 0.125 for i in range(32)], done_ms=6.2).sample(
        prompt_tokens=64, gen_tokens=32, server_timings=SERVER
    )
    pp, tg = measurements([sample, steady], lambda s: s.server_timings["prompt_per_second"])
    assert pp.samples_ts == [50000.0, 50000.0] and len(tg.samples_ts) == 1


def test_without_server_timings_nothing_is_judged() -> None:
    clock = _clock([6.0 + i * 0.006 for i in range(32)], done_ms=6.3)
    sample: RequestSample = clock.sample(prompt_tokens=64, gen_tokens=32)
    assert not sample.stream_burst and sample.decode_tokens_per_s is not None
