"""Ollama (`/api/generate`, streamed NDJSON): durations come back in nanoseconds in the final
chunk (`load_duration`, `prompt_eval_count/_duration`, `eval_count/_duration`), and `/api/ps`
says how much of the model sits in GPU memory (`size_vram < size`: partly on the CPU).
Docs: docs.ollama.com/api/generate, docs.ollama.com/api/usage, docs.ollama.com/api/ps.
"""

from __future__ import annotations

import base64
from typing import Any

from jobs.backends import check_backend
from jobs.result import BackendCheck, RequestSample
from jobs.spec import JobSpec
from jobs.telemetry import PhaseWindow
from worker.engines.base import RunTarget, register
from worker.engines.http_stream import HttpError, get_json, post_json, stream_ndjson
from worker.engines.served import ServedEngine
from worker.engines.timing import StreamClock

_NS = 1e9


@register("ollama")
class Ollama(ServedEngine):
    def __init__(self) -> None:
        self._used: set[tuple[str, str]] = set()  # (url, model) this worker ran

    def close(self) -> None:
        """Ask Ollama to unload what we ran (keep_alive 0): its default keeps a model in
        (shared) GPU memory for minutes, which the next engine's job would pay for."""
        used, self._used = self._used, set()
        for url, model in used:
            try:
                post_json(url, "/api/generate", {"model": model, "keep_alive": 0}, timeout_s=60)
            except (OSError, HttpError):
                pass  # Ollama is gone or the model already unloaded

    def request(
        self, job: JobSpec, target: RunTarget, prompt: str, deadline: float
    ) -> tuple[RequestSample, list[PhaseWindow], dict[str, Any]]:
        assert target.url is not None
        options: dict[str, Any] = {
            "num_ctx": job.context,
            "num_predict": job.workload.gen_tokens,
            "temperature": 0,
            "seed": 42,
        }
        num_gpu = _num_gpu(job)
        if num_gpu is not None:
            options["num_gpu"] = num_gpu  # layers on the GPU
        body: dict[str, Any] = {
            "model": target.served_model,
            "prompt": prompt,
            "raw": True,  # no chat template: the prompt is exactly what we measure
            "stream": True,
            "options": options,
        }
        if target.image is not None:
            body["images"] = [base64.b64encode(target.image.read_bytes()).decode()]
        assert target.served_model is not None
        self._used.add((target.url, target.served_model))
        clock = StreamClock.start(deadline)
        final: dict[str, Any] = {}
        stream = stream_ndjson(target.url, "/api/generate", body, timeout_s=clock.remaining_s())
        for chunk in stream:
            if chunk.get("done"):
                final = chunk
                break
            if chunk.get("response") or chunk.get("thinking"):
                clock.token()
        clock.finish()
        if not final:
            raise ValueError("the stream ended without its final `done` chunk")
        prompt_n = int(final.get("prompt_eval_count", 0))
        gen_n = int(final.get("eval_count", len(clock.token_times)))
        timings = {k: float(v) for k, v in final.items() if k.endswith(("_duration", "_count"))}
        sample = clock.sample(prompt_tokens=prompt_n, gen_tokens=gen_n, server_timings=timings)
        return sample, clock.windows(prompt_n, gen_n), final

    def prefill_rate(self, sample: RequestSample) -> float | None:
        duration = sample.server_timings.get("prompt_eval_duration", 0.0)
        return sample.prompt_tokens / (duration / _NS) if duration > 0 else None

    def decode_rate(self, sample: RequestSample) -> float | None:
        # Ollama's own "eval rate": eval_count tokens over eval_duration ns of generation.
        count = sample.server_timings.get("eval_count", 0.0)
        duration = sample.server_timings.get("eval_duration", 0.0)
        return count / (duration / _NS) if duration > 0 and count > 0 else None

    def load_time_s(self, first_payload: dict[str, Any]) -> float | None:
        ns = first_payload.get("load_duration")
        return float(ns) / _NS if ns else None

    def details(self, job: JobSpec, target: RunTarget) -> tuple[dict[str, Any], str | None]:
        assert target.url is not None
        version = get_json(target.url, "/api/version", timeout_s=10).get("version")
        running = get_json(target.url, "/api/ps", timeout_s=10).get("models", [])
        entry = next(
            (m for m in running if target.served_model in (m.get("name"), m.get("model"))), None
        )
        details: dict[str, Any] = {"version": version}
        if entry is None:
            return details, None
        size, size_vram = int(entry.get("size", 0)), int(entry.get("size_vram", 0))
        details.update(
            size_bytes=size,
            size_vram_bytes=size_vram,
            gpu_fraction=size_vram / size if size else None,
            partial_offload=0 < size_vram < size,
            model_details=entry.get("details", {}),
        )
        return details, None

    def backend_check(self, job: JobSpec, details: dict[str, Any]) -> BackendCheck | None:
        """From `/api/ps`: `size_vram` (bytes of the model in GPU memory) is all Ollama says
        (api/types.go, ProcessModelResponse): it names no GPU library, so a GPU label can be
        caught running on the CPU but not told from another GPU backend."""
        size_vram = details.get("size_vram_bytes")
        size = details.get("size_bytes")
        source = (
            f"ollama /api/ps: size_vram {size_vram} of size {size} bytes"
            if size_vram is not None
            else "ollama /api/ps: the model was not listed"
        )
        return check_backend(
            job.backend,
            [],
            None,
            gpu_layers_requested=_num_gpu(job),
            gpu_layers_asked=job.gpu_layers,
            vram_bytes=size_vram,
            source=source,
        )


def _num_gpu(job: JobSpec) -> int | None:
    """Ollama's `num_gpu` (layers on the GPU): the matrix's gpu_layers, none for `cpu`, and
    Ollama's own choice otherwise (it fits what its memory estimate allows)."""
    if job.gpu_layers is not None:
        return job.gpu_layers
    return 0 if job.backend == "cpu" else None
