"""Any OpenAI-compatible server (vLLM, SGLang, llama-swap, llama-server's /v1): streamed
`/chat/completions` with `stream_options.include_usage`, so the last chunk carries the token
counts. Servers that add their own timing to that chunk (llama-server's `timings`) have it kept.
"""

from __future__ import annotations

from typing import Any

from jobs.result import RequestSample
from jobs.spec import JobSpec
from jobs.telemetry import PhaseWindow
from worker.engines.base import RunTarget, register
from worker.engines.http_stream import get_json, stream_sse
from worker.engines.served import ServedEngine, chat_body
from worker.engines.timing import StreamClock, server_decode_rate, server_prefill_rate


@register("openai")
class OpenAICompatible(ServedEngine):
    def request(
        self, job: JobSpec, target: RunTarget, prompt: str, deadline: float
    ) -> tuple[RequestSample, list[PhaseWindow], dict[str, Any]]:
        assert target.url is not None
        body = {
            **chat_body(job, target, prompt),
            "stream": True,
            "stream_options": {"include_usage": True},
            # Generate exactly max_tokens where the server supports it (vLLM, SGLang,
            # llama-server); OpenAI-compatible servers ignore parameters they do not know.
            "ignore_eos": True,
        }
        clock = StreamClock.start(deadline)
        usage: dict[str, Any] = {}
        last: dict[str, Any] = {}
        stream = stream_sse(
            target.url,
            "/chat/completions",
            body,
            timeout_s=clock.remaining_s(),
            token=target.api_key,
        )
        for chunk in stream:
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                # A reasoning model's thinking is generated tokens too (usage counts them).
                if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"):
                    clock.token()
            if chunk.get("usage"):
                usage, last = chunk["usage"], chunk
        clock.finish()
        if not usage:
            raise ValueError("no usage in the stream: the server ignored include_usage")
        prompt_n = int(usage.get("prompt_tokens", 0))
        gen_n = int(usage.get("completion_tokens", len(clock.token_times)))
        timings = {
            k: float(v)
            for k, v in (last.get("timings") or {}).items()
            if isinstance(v, int | float)
        }
        sample = clock.sample(
            prompt_tokens=prompt_n,
            gen_tokens=gen_n,
            server_timings=timings,
            cached_prompt=int(timings.get("cache_n", 0)) > 0
            or int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)) > 0,
        )
        return sample, clock.windows(prompt_n, gen_n), last

    def prefill_rate(self, sample: RequestSample) -> float | None:
        # Only a server that reports its own prefill timing (llama-server) separates it.
        return server_prefill_rate(sample)

    def decode_rate(self, sample: RequestSample) -> float | None:
        # llama-server behind /v1 adds its `timings` to the last chunk; other servers do not.
        return server_decode_rate(sample)

    def details(self, job: JobSpec, target: RunTarget) -> tuple[dict[str, Any], str | None]:
        assert target.url is not None
        listed = get_json(target.url, "/models", timeout_s=10, token=target.api_key).get("data", [])
        return {"served_models": [m.get("id") for m in listed]}, None
