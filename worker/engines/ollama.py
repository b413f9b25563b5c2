"""Ollama, spoken as its source at ollama/ollama@fb30760 (2026-08-21) defines it; the shapes
and the upstream file each comes from are listed in tests/fixtures/ollama/README.md.

- Text: `/api/generate` with `raw: true`, as Ollama's own benchmark does (cmd/bench/bench.go):
  no template, so the prompt is exactly what we measure. Vision: `/api/chat` with
  `messages[].images`, the documented path (docs/capabilities/vision.mdx); a raw prompt carries
  no image marker, so up to 0.24 the runner ignored the image and since 0.30 llama-server fails.
- Every request starts with a word whose first letter differs from the previous request's, so
  no prompt prefix but the BOS token can come from Ollama's prompt cache (cmd/bench varies its
  first word for the same reason). Ollama never reports how many prompt tokens it took from the
  cache: `prompt_eval_count` counts them (0.30+: llama-server `cache_n + prompt_n`,
  llm/llama_server.go promptEvalCount; before: `len(inputs)` before LoadCacheSlot drops the
  cached prefix, runner/ollamarunner/runner.go at v0.24.0) while `prompt_eval_duration` does
  not. pp is therefore computed over `prompt_eval_count - BOS` (the BOS comes from
  `/api/show`'s `tokenizer.ggml.add_bos_token`); a chat request's template head is cached by an
  amount nobody reports, so vision requests give no pp (TTFT and tg only).
- `think` on every request: the job's `think` axis (true for `on`), else false, since an
  omitted `think` means thinking on for a thinking model (api/types.go ThinkValue also takes
  "high"/"medium"/"low" for some models; orch sends only the bool). With thinking on, the
  thinking is generated tokens: `eval_count` counts them (the runner counts every token it
  samples; the server splits thinking from the answer afterwards) and `num_predict` bounds
  them with the answer, so gen counts and tg are over all of them. A job that turns thinking
  on for a model whose `/api/show` capabilities lack "thinking" fails before measuring.
- `done_reason`/`eval_count`: a reply shorter than `gen_tokens` (Ollama has no ignore_eos)
  stays out of tg and is counted in details; if every measured reply stopped early the job
  fails, with the evidence.
- `/api/ps` `context_length` (since 0.10): Ollama clamps `num_ctx` to the trained context and
  only logs it (llm/server.go, server/sched.go effectiveContext): a shorter context fails the job.
- Every call carries `target.api_key` as a bearer token (an Ollama behind an auth proxy).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from jobs.backends import check_backend
from jobs.result import BackendCheck, Measurement, RequestSample
from jobs.spec import JobSpec
from jobs.telemetry import PhaseWindow
from worker.engines.base import RunTarget, register
from worker.engines.http_stream import HttpError, get_json, post_json, stream_ndjson
from worker.engines.served import ServedEngine
from worker.engines.timing import StreamClock, measurements

_NS = 1e9
# First words with 26 different first letters: two prompts that differ in their first
# character share no first token, whatever the tokenizer.
_LEADS = (
    "apple bread cloud delta eagle field grape house island jolly kite lemon maple north "
    "ocean piano quiet river stone tiger umbra valley water xenon yellow zebra"
).split()
# /api/ps has reported context_length since 0.10; 0.30 runs llama.cpp's llama-server.
_CONTEXT_REPORTED = (0, 10)
_LLAMA_SERVER = (0, 30)


def parse_version(text: object) -> tuple[int, int, int] | None:
    """`0.30.1`, `0.12.6-rc1` -> (0, 30, 1), (0, 12, 6); None for what is not a version."""
    match = re.match(r"v?(\d+)\.(\d+)\.(\d+)", str(text or ""))
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


@dataclass
class _Server:
    """What one Ollama said about itself and one model, asked once per (url, model)."""

    version: str | None
    show: dict[str, Any]

    @property
    def capabilities(self) -> list[str] | None:
        caps = self.show.get("capabilities")
        return [str(c) for c in caps] if isinstance(caps, list) else None

    @property
    def add_bos(self) -> bool | None:
        value = self.show.get("model_info", {}).get("tokenizer.ggml.add_bos_token")
        return value if isinstance(value, bool) else None

    def trained_context(self) -> int | None:
        info = self.show.get("model_info", {})
        value = info.get(f"{info.get('general.architecture')}.context_length")
        return int(value) if isinstance(value, int) else None

    def model_info(self) -> dict[str, Any]:
        """The scalar facts worth keeping (the full map holds tokenizer arrays, megabytes)."""
        info = self.show.get("model_info", {})
        arch = info.get("general.architecture")
        keep = (
            "general.architecture",
            "general.parameter_count",
            "general.file_type",
            f"{arch}.context_length",
            f"{arch}.block_count",
            "tokenizer.ggml.add_bos_token",
        )
        return {k: info[k] for k in keep if isinstance(info.get(k), str | int | float | bool)}


@dataclass
class _Job:
    """Replies of the job being run: (done_reason, eval_count) per request, warm-ups first."""

    key: str
    replies: list[tuple[str, int]] = field(default_factory=list)


@register("ollama")
class Ollama(ServedEngine):
    def __init__(self) -> None:
        self._used: dict[tuple[str, str], str | None] = {}  # (url, model) ran -> its token
        self._servers: dict[tuple[str, str], _Server] = {}
        self._turn = 0
        self._job: _Job | None = None

    def close(self) -> None:
        """Ask Ollama to unload what we ran (keep_alive 0): its default keeps a model in
        (shared) GPU memory for minutes, which the next engine's job would pay for."""
        used, self._used = self._used, {}
        self._servers.clear()
        for (url, model), token in used.items():
            try:
                post_json(url, "/api/generate", {"model": model, "keep_alive": 0},
                          timeout_s=60, token=token)  # fmt: skip
            except (OSError, HttpError):
                pass  # Ollama is gone or the model already unloaded

    def _server(self, target: RunTarget) -> _Server:
        assert target.url is not None and target.served_model is not None
        key = (target.url, target.served_model)
        if key not in self._servers:
            token = target.api_key
            version = get_json(target.url, "/api/version", timeout_s=10, token=token)
            show = post_json(target.url, "/api/show", {"model": target.served_model},
                             timeout_s=30, token=token)  # fmt: skip
            self._servers[key] = _Server(version.get("version"), show)
        return self._servers[key]

    def request(
        self, job: JobSpec, target: RunTarget, prompt: str, deadline: float
    ) -> tuple[RequestSample, list[PhaseWindow], dict[str, Any]]:
        assert target.url is not None and target.served_model is not None
        server = self._server(target)
        if target.image is not None and server.capabilities is not None:
            if "vision" not in server.capabilities:
                raise ValueError(
                    f"{target.served_model} cannot take an image (ollama /api/show "
                    f"capabilities: {server.capabilities}): use a vision model for this job"
                )
        if job.think == "on" and server.capabilities is not None:
            if "thinking" not in server.capabilities:
                raise ValueError(
                    f"{target.served_model} does not think (ollama /api/show capabilities: "
                    f"{server.capabilities}): drop think: on for this model"
                )
        lead = _LEADS[self._turn % len(_LEADS)]
        self._turn += 1
        path, body = _body(job, target, f"{lead} {prompt}")
        self._used[(target.url, target.served_model)] = target.api_key
        clock = StreamClock.start(deadline)
        final: dict[str, Any] = {}
        stream = stream_ndjson(target.url, path, body, timeout_s=clock.remaining_s(),
                               token=target.api_key)  # fmt: skip
        for chunk in stream:
            if chunk.get("done"):
                final = chunk
                break
            text = chunk.get("message", chunk)  # chat: message.content; generate: response
            if text.get("content") or text.get("response") or text.get("thinking"):
                clock.token()
        clock.finish()
        if not final:
            raise ValueError("the stream ended without its final `done` chunk")
        prompt_n = int(final.get("prompt_eval_count", 0))
        gen_n = int(final.get("eval_count", len(clock.token_times)))
        self._reply(job, str(final.get("done_reason", "")), gen_n)
        timings = {k: float(v) for k, v in final.items() if k.endswith(("_duration", "_count"))}
        # Cached prompt tokens: the BOS alone on the raw path; unknown through a chat template.
        cached = None if target.image is not None else server.add_bos
        if cached is not None:
            timings["prompt_cached_tokens"] = float(cached)
        sample = clock.sample(prompt_tokens=prompt_n, gen_tokens=gen_n, server_timings=timings,
                              cached_prompt=cached is None or cached > 0)  # fmt: skip
        return sample, clock.windows(prompt_n, gen_n), final

    def _reply(self, job: JobSpec, done_reason: str, eval_count: int) -> None:
        key = job.model_dump_json()
        if self._job is None or self._job.key != key:
            self._job = _Job(key)
        self._job.replies.append((done_reason, eval_count))

    def measurements(self, job: JobSpec, samples: list[RequestSample]) -> list[Measurement]:
        """pp from every measured request (prefill does not depend on where decoding stopped);
        tg only from replies that ran the full `gen_tokens`, never mixed with short ones."""
        full = [s for s in samples if s.gen_tokens >= job.workload.gen_tokens]
        out = [m for m in measurements(samples, self.prefill_rate) if m.test == "pp"]
        out += [m for m in measurements(full, self.prefill_rate, self.decode_rate)
                if m.test == "tg"]  # fmt: skip
        return out

    def prefill_rate(self, sample: RequestSample) -> float | None:
        timings = sample.server_timings
        cached = timings.get("prompt_cached_tokens")
        duration = timings.get("prompt_eval_duration", 0.0)
        if cached is None or duration <= 0:
            return None  # how many prompt tokens came from the cache is not known
        return (sample.prompt_tokens - cached) / (duration / _NS)

    def decode_rate(self, sample: RequestSample) -> float | None:
        # Ollama's own "eval rate": eval_count tokens over eval_duration ns of generation.
        count = sample.server_timings.get("eval_count", 0.0)
        duration = sample.server_timings.get("eval_duration", 0.0)
        return count / (duration / _NS) if duration > 0 and count > 0 else None

    def load_time_s(self, first_payload: dict[str, Any]) -> float | None:
        ns = first_payload.get("load_duration")
        return float(ns) / _NS if ns else None

    def details(self, job: JobSpec, target: RunTarget) -> tuple[dict[str, Any], str | None]:
        assert target.url is not None and target.served_model is not None
        server = self._server(target)
        running = get_json(target.url, "/api/ps", timeout_s=10, token=target.api_key)
        entry = next((m for m in running.get("models", [])
                      if target.served_model in (m.get("name"), m.get("model"))), None)  # fmt: skip
        version = parse_version(server.version)
        details: dict[str, Any] = {
            "version": server.version,
            "runner": _runner(version),
            "capabilities": server.capabilities,
            "model_info": server.model_info(),
            "think": job.think == "on",
        }
        problems = [self._early_stops(job, details)]
        if entry is not None:
            size, size_vram = int(entry.get("size", 0)), int(entry.get("size_vram", 0))
            details.update(
                size_bytes=size,
                size_vram_bytes=size_vram,
                gpu_fraction=size_vram / size if size else None,
                partial_offload=0 < size_vram < size,
                model_details=entry.get("details", {}),
            )
            problems.insert(0, _context_problem(job, server, entry, version, details))
        return details, "; ".join(p for p in problems if p) or None

    def _early_stops(self, job: JobSpec, details: dict[str, Any]) -> str | None:
        """Count the measured replies that stopped before `gen_tokens`; all of them: a problem."""
        replies = self._job.replies[job.workload.warmup_runs :] if self._job else []
        self._job = None
        short = [(reason, n) for reason, n in replies if n < job.workload.gen_tokens]
        details["early_stops"] = len(short)
        details["done_reasons"] = sorted({reason for reason, _ in replies})
        if not replies or len(short) < len(replies):
            return None
        reason, n = short[0]
        return (f"every reply stopped before the job's {job.workload.gen_tokens} tokens (first: "
                f"done_reason {reason!r} after {n}; Ollama has no ignore_eos): no tg to report, "
                "lower gen_tokens or use a prompt that the model answers at length")  # fmt: skip

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


def _body(job: JobSpec, target: RunTarget, prompt: str) -> tuple[str, dict[str, Any]]:
    """(path, body) of one streamed request: greedy, seeded, `gen_tokens` long."""
    options: dict[str, Any] = {
        "num_ctx": job.context,
        "num_predict": job.workload.gen_tokens,
        "temperature": 0,
        "seed": 42,
    }
    num_gpu = _num_gpu(job)
    if num_gpu is not None:
        options["num_gpu"] = num_gpu  # layers on the GPU
    common = {"model": target.served_model, "stream": True, "options": options,
              "think": job.think == "on"}  # fmt: skip
    if target.image is None:
        return "/api/generate", {**common, "prompt": prompt, "raw": True}
    lead, _, rest = prompt.partition(" ")
    message = {
        "role": "user",
        # `[img]` places the image after the unique first word (server/prompt.go), so the
        # image is never a prefix shared with the previous request's cache.
        "content": f"{lead} [img] {rest}",
        "images": [base64.b64encode(target.image.read_bytes()).decode()],
    }
    return "/api/chat", {**common, "messages": [message]}


def _context_problem(
    job: JobSpec,
    server: _Server,
    entry: dict[str, Any],
    version: tuple[int, int, int] | None,
    details: dict[str, Any],
) -> str | None:
    """A context shorter than the job's (Ollama clamps num_ctx to the trained context and
    only logs it); a longer one is fine (0.10 reported num_ctx times the parallel slots)."""
    ran = entry.get("context_length")
    details["context_length"] = ran
    if not isinstance(ran, int) or ran <= 0:
        details["context_check"] = (
            "not reported: /api/ps has context_length since Ollama 0.10"
            if version is not None and version < _CONTEXT_REPORTED
            else "not reported by /api/ps"
        )
        return None
    if ran >= job.context:
        details["context_check"] = "ok"
        return None
    details["context_check"] = "clamped"
    trained = server.trained_context()
    why = f" (the model's trained context: {trained}, /api/show model_info)" if trained else ""
    return (f"ollama ran {target_name(entry)} with a {ran}-token context, not the job's "
            f"{job.context} (/api/ps context_length){why}: Ollama clamps num_ctx and only logs "
            "it; lower the matrix's context for this model")  # fmt: skip


def _runner(version: tuple[int, int, int] | None) -> str | None:
    """What runs the model: llama.cpp's llama-server since 0.30, Ollama's own runner before."""
    if version is None:
        return None
    return "llama-server" if version >= _LLAMA_SERVER else "ollama runner"


def target_name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or entry.get("model"))


def _num_gpu(job: JobSpec) -> int | None:
    """Ollama's `num_gpu` (layers on the GPU): the matrix's gpu_layers, none for `cpu`, and
    Ollama's own choice otherwise (it fits what its memory estimate allows)."""
    if job.gpu_layers is not None:
        return job.gpu_layers
    return 0 if job.backend == "cpu" else None
