"""llama.cpp's `llama-server`: what a user of a chat app feels (TTFT, decode speed, latency).

The adapter starts the configured binary for a (model, backend, context, threads) group, waits
for `/health`, records the load time, and keeps the server warm while consecutive jobs share the
group. Each measured request streams from `/completion`; the client times the first token, every
token after it and the end, and the server's own `timings` are kept beside them. Prompts are
exactly `prompt_tokens` tokens (built with the server's `/tokenize`, sent as token ids), with
`cache_prompt` off so that every repetition prefills; a response that still reports cached
tokens (`cache_n > 0`) is flagged.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from jobs.backends import LOG_HEAD_CHARS, check_llama_log, gpu_layers_for, llama_cpp_offload_args
from jobs.engineoptions import option_mismatch
from jobs.load import LoadResult
from jobs.progress import Phase
from jobs.result import BackendCheck, EngineInfo, RequestSample, Status
from jobs.spec import JobSpec
from jobs.telemetry import PhaseWindow
from worker.engines.base import Engine, EngineOutcome, RunTarget, local_files, register
from worker.engines.http_stream import HttpError, get_json, post_json, stream_sse
from worker.engines.server_process import ServerProcess, free_port
from worker.engines.timing import (
    StreamClock,
    measurements,
    server_decode_rate,
    server_prefill_rate,
)
from worker.load.llamaserver import LoadRefused, llama_server_load
from worker.progress import last_tokens_per_s

# Log lines that mean the model never got to serve (llama.cpp's own wording).
_LOAD_FAILURE = re.compile(
    r"failed to load model|error loading model|unable to load model|failed to allocate"
    r"|out of memory|cudaMalloc failed|ErrorOutOfDeviceMemory|failed to open",
    re.IGNORECASE,
)
_FILLER = (
    "The quick brown fox jumps over the lazy dog while the old clock on the wall keeps time "
    "and a small boat drifts along the quiet river under a pale morning sky. "
)
_LOAD_TIMEOUT_S = 600.0
# src/llama-context.cpp: "%s: flash_attn            = %s" (enabled, disabled or auto), and
# src/llama-kv-cache.cpp: "%s: %10s KV buffer size = %8.2f MiB" (the buffer's device name).
_FLASH_ATTN = re.compile(r"flash_attn\s+= (enabled|disabled|auto)")
_KV_BUFFER = re.compile(r"(\S+) KV buffer size =")


@register("llama-server")
class LlamaServer(Engine):
    def __init__(self) -> None:
        self._server: ServerProcess | None = None
        self._group: tuple[Any, ...] | None = None
        self._load_time_s: float | None = None
        self._check: BackendCheck | None = None  # from the load log of the running server
        self._options: dict[str, str | bool | None] = {}  # what that log says it ran with

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
        self._server, self._group, self._load_time_s = None, None, None
        self._check, self._options = None, {}

    def run(self, job: JobSpec, target: RunTarget) -> EngineOutcome:
        # One deadline for everything the job does: load, tokenizing, warm-up, repetitions.
        deadline = time.monotonic() + target.timeout_s
        info = EngineInfo(name=self.name, backend=job.backend, binary=str(target.binary))
        group = (str(target.binary), str(target.model_path), job.context, target.threads,
                 job.backend, job.gpu_layers, job.flash_attention, job.kv_offload,
                 _slots(job))  # fmt: skip
        fresh_load = group != self._group or self._server is None or not self._server.alive()
        if fresh_load:
            target.on_phase(Phase.LOADING)
            failure = self._start(job, target, group, info)
            if failure is not None:
                return failure
        server = self._server
        assert server is not None
        target.on_process(server.pid)
        try:
            return self._measure(job, server, info, fresh_load, deadline, target)
        except (HttpError, OSError, ValueError, KeyError) as exc:
            tail = server.log_tail()
            alive = server.alive()
            self.close()
            status = Status.ERROR
            why = "the server died" if not alive else "a request failed"
            return EngineOutcome(status, info, error=f"{why}: {exc}\n{tail}", argv=server.argv)

    def argv(self, job: JobSpec, target: RunTarget, port: int) -> list[str]:
        binary, model = local_files(target)
        argv = [
            str(binary), "-m", str(model),
            "--host", "127.0.0.1", "--port", str(port),
            "-c", str(job.context), "-np", str(_slots(job)), "--no-webui",
        ]  # fmt: skip
        # Always explicit: llama-server's default (`auto`) fits as many layers as it likes on
        # any GPU the build finds, a `cpu` job included.
        argv += llama_cpp_offload_args(job.backend, job.gpu_layers)
        if job.flash_attention is not None:
            argv += ["-fa", job.flash_attention]  # on|off (common/arg.cpp)
        if job.kv_offload is not None:
            argv += ["-kvo" if job.kv_offload else "-nkvo"]
        # llama.cpp's own load messages (devices, "offloaded N/M layers") are the evidence of
        # what ran where, and llama-server logs them only from verbosity 4 (trace) up.
        argv += ["-lv", "4"]
        if target.threads:
            argv += ["-t", str(target.threads)]
        return argv

    def _start(
        self, job: JobSpec, target: RunTarget, group: tuple[Any, ...], info: EngineInfo
    ) -> EngineOutcome | None:
        self.close()
        argv = self.argv(job, target, free_port())
        server = ServerProcess(argv)
        try:
            server.start()
        except OSError as exc:
            server.stop()  # closes its log file
            return EngineOutcome(Status.ERROR, info, error=f"cannot start: {exc}", argv=argv)
        target.on_process(server.pid)
        ready = server.wait_ready(min(_LOAD_TIMEOUT_S, target.timeout_s))
        if not ready:
            log = server.log_text()
            alive = server.alive()
            server.stop()
            if not alive and _LOAD_FAILURE.search(log):
                status = Status.LOAD_FAILED
            else:
                status = Status.TIMEOUT if alive else Status.LOAD_FAILED
            why = "not ready in time" if alive else "exited while loading"
            tail = "\n".join(log.strip().splitlines()[-40:])
            return EngineOutcome(status, info, error=f"llama-server {why}\n{tail}", argv=argv)
        self._server, self._group, self._load_time_s = server, group, server.load_time_s
        self._check = check_llama_log(
            job.backend,
            server.log_head(LOG_HEAD_CHARS),
            gpu_layers_requested=gpu_layers_for(job.backend, job.gpu_layers),
            gpu_layers_asked=job.gpu_layers,
            source="llama-server load log",
        )
        self._options = ran_options(server.log_head(LOG_HEAD_CHARS))
        mismatch = option_mismatch(job, self._options, "llama-server load log")
        if mismatch is not None:
            self.close()
            info = info.model_copy(update={"details": {"engine_options": self._options}})
            return EngineOutcome(Status.ERROR, info, error=mismatch, argv=argv)
        return None

    def _measure(
        self,
        job: JobSpec,
        server: ServerProcess,
        info: EngineInfo,
        fresh_load: bool,
        deadline: float,
        target: RunTarget,
    ) -> EngineOutcome:
        work, timeout_s, on_phase = job.workload, target.timeout_s, target.on_phase
        samples: list[RequestSample] = []
        phases: list[PhaseWindow] = []
        load: LoadResult | None = None
        try:
            if work.load is not None:  # serving under load: many requests at once
                load = llama_server_load(job, server.url, deadline, windows=phases)
            else:
                prompt = work.prompt_text or _prompt_tokens(server.url, work.prompt_tokens)
                if work.warmup_runs:
                    on_phase(Phase.WARMUP)
                for _ in range(work.warmup_runs):
                    _request(server.url, prompt, work.gen_tokens, deadline)
                for k in range(job.repetitions):
                    on_phase(Phase.REPETITION, k + 1, job.repetitions, last_tokens_per_s(samples))
                    sample, windows = _request(server.url, prompt, work.gen_tokens, deadline)
                    samples.append(sample)
                    phases += windows
        except TimeoutError as exc:
            return EngineOutcome(Status.TIMEOUT, info, error=f"{exc} ({timeout_s:.0f} s)",
                                 argv=server.argv)  # fmt: skip
        except LoadRefused as exc:
            return EngineOutcome(Status.ERROR, info, error=str(exc), argv=server.argv)
        props = get_json(server.url, "/props", timeout_s=10)
        details = {
            "build_info": props.get("build_info"),
            "n_ctx": props.get("default_generation_settings", {}).get("n_ctx"),
            "model_path": props.get("model_path"),
            "engine_options": self._options,
        }
        info = info.model_copy(update={"details": details})
        return EngineOutcome(
            Status.OK,
            info,
            measurements=measurements(samples, server_prefill_rate, server_decode_rate),
            argv=server.argv,
            phases=phases,
            requests=samples,
            load_time_s=self._load_time_s if fresh_load else None,
            backend_check=self._check,
            load=load,
        )


def _slots(job: JobSpec) -> int:
    """llama-server's -np: a load workload's slots, else one (a single stream)."""
    return job.workload.load.server_slots() if job.workload.load is not None else 1


def ran_options(log: str) -> dict[str, str | bool | None]:
    """What a llama.cpp load log says the context ran with, in the job's spelling: flash
    attention from llama_context's `flash_attn = ...` line; the KV cache on a GPU when a KV
    buffer is on a device other than the CPU, in RAM when every one is a CPU buffer while a
    GPU was in use (without a GPU there was nowhere else: not evidence); None: not said."""
    flash = _FLASH_ATTN.search(log)
    buffers = _KV_BUFFER.findall(log)
    on_gpu = [b for b in buffers if not b.upper().startswith("CPU")]
    kv: bool | None = None
    if on_gpu:
        kv = True
    elif buffers and "using device" in log:
        kv = False
    spelled = {"enabled": "on", "disabled": "off", "auto": "auto"}
    return {"flash_attention": spelled[flash.group(1)] if flash else None, "kv_offload": kv}


def _prompt_tokens(url: str, n: int) -> list[int]:
    """Exactly `n` token ids of plain text, from the server's own tokenizer."""
    text = _FILLER
    while True:
        tokens: list[int] = post_json(url, "/tokenize", {"content": text}, timeout_s=30)["tokens"]
        if len(tokens) >= n:
            return tokens[:n]
        text += _FILLER * max(1, n // max(1, len(tokens)))


def _request(
    url: str, prompt: str | list[int], gen_tokens: int, deadline: float
) -> tuple[RequestSample, list[PhaseWindow]]:
    body = {
        "prompt": prompt,
        "n_predict": gen_tokens,
        "stream": True,
        "cache_prompt": False,
        "temperature": 0.0,
        "seed": 42,
        "ignore_eos": True,
    }
    clock = StreamClock.start(deadline)
    final: dict[str, Any] = {}
    for event in stream_sse(url, "/completion", body, timeout_s=clock.remaining_s()):
        if event.get("stop"):
            final = event
            break
        clock.token(event.get("tokens_predicted"))
    clock.finish()
    if not final:
        raise ValueError("the stream ended without its final `stop` event")
    if not clock.token_times:
        raise ValueError(f"no token streamed (final event: {json.dumps(final)[:300]})")
    timings = final.get("timings", {})
    prompt_n = int(timings.get("prompt_n", final.get("tokens_evaluated", 0)))
    generated = int(timings.get("predicted_n", final.get("tokens_predicted", 0)))
    sample = clock.sample(
        prompt_tokens=prompt_n,
        gen_tokens=generated,
        server_timings={k: v for k, v in timings.items() if isinstance(v, int | float)},
        cached_prompt=int(timings.get("cache_n", 0)) > 0,
    )
    return sample, clock.windows(prompt_n, generated)
