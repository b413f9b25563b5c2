"""LM Studio (port 1234), the app many of our users benchmark with by hand today.

- Load: with the `lms` CLI when the worker config names it as the backend's binary
  (`lms load KEY --context-length N --gpu max|off --identifier ID`: GPU offload is set, max for a
  GPU backend, off for cpu; load time measured around the command), else with
  `POST /api/v1/models/load` and `config.context_length` (LM Studio 0.4+; that API has no
  offload setting, so LM Studio's default applies and the result says so). A loaded instance
  with another model or context is unloaded first; one with the same is reused.
- Measure: `POST /api/v0/chat/completions` (not streamed), whose answer carries LM Studio's own
  `stats` (`time_to_first_token` s, `tokens_per_second`, `generation_time` s, `stop_reason`),
  `usage`, `model_info` (arch, quant, format, context_length) and `runtime` (name, version).
  TTFT is therefore LM Studio's measurement (`ttft_source: server`): what its UI shows.
- The runtime name says which llama.cpp build ran (`...-vulkan-...`, `...-rocm-...`); a job
  whose backend is not in it fails instead of being recorded under the wrong backend.
Docs: lmstudio.ai/docs/developer/rest (v1 load/unload) and /rest/endpoints (v0).
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

from jobs.result import RequestSample, Status
from jobs.spec import JobSpec
from jobs.telemetry import PhaseWindow
from worker.engines.base import EngineOutcome, RunTarget, register
from worker.engines.http_stream import HttpError, post_json
from worker.engines.process import run_bounded
from worker.engines.served import ServedEngine, chat_body

_LOAD_TIMEOUT_S = 1200.0


@register("lmstudio")
class LMStudio(ServedEngine):
    def __init__(self) -> None:
        # (url, model key, instance id, context) of the instance this worker loaded
        self._instance: tuple[str, str, str, int] | None = None
        self._load_time_s: float | None = None
        self._last_runtime: dict[str, Any] = {}
        self._lms: Path | None = None  # the lms CLI that loaded the current instance
        self._offload = ""

    def close(self) -> None:
        instance, self._instance = self._instance, None
        if instance is not None:
            url, _model, instance_id, _context = instance
            try:
                if self._lms is not None:
                    run_bounded([str(self._lms), "unload", instance_id], 60)
                else:
                    body = {"instance_id": instance_id}
                    post_json(url, "/api/v1/models/unload", body, timeout_s=60)
            except (OSError, HttpError):
                pass  # already unloaded (by the user, by a TTL) or the app is gone

    def prepare(self, job: JobSpec, target: RunTarget) -> str:
        """Load the model with the job's context (or reuse it); return the instance id."""
        assert target.url is not None and target.served_model is not None
        wanted = (target.url, target.served_model, job.context)
        if self._instance is not None:
            url, model, instance_id, context = self._instance
            if (url, model, context) == wanted:
                self._load_time_s = None
                return instance_id
            self.close()
        self._lms = target.binary
        if target.binary is not None:
            instance_id = self._load_with_cli(job, target.binary, target.served_model)
        else:
            body = {"model": target.served_model, "config": {"context_length": job.context}}
            loaded = post_json(target.url, "/api/v1/models/load", body, timeout_s=_LOAD_TIMEOUT_S)
            instance_id = str(loaded["model_instance_id"])
            self._load_time_s = float(loaded.get("load_time_seconds", 0.0)) or None
            self._offload = "LM Studio's default (its REST load API has no offload setting)"
        self._instance = (target.url, target.served_model, instance_id, job.context)
        return instance_id

    def _load_with_cli(self, job: JobSpec, lms: Path, model: str) -> str:
        gpu = "off" if job.backend == "cpu" else "max"
        instance_id = re.sub(r"[^A-Za-z0-9._-]", "-", f"orch-{model}-{job.context}")
        argv = [str(lms), "load", model, "--context-length", str(job.context),
                "--gpu", gpu, "--identifier", instance_id]  # fmt: skip
        done = run_bounded(argv, _LOAD_TIMEOUT_S)
        if done.timed_out or done.returncode != 0:
            raise HttpError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr_tail()}")
        self._load_time_s = done.wall_s
        self._offload = f"{gpu} (lms load --gpu {gpu})"
        return instance_id

    def run(self, job: JobSpec, target: RunTarget) -> EngineOutcome:
        if target.url is not None and target.served_model is not None:
            try:
                instance = self.prepare(job, target)
            except HttpError as exc:  # LM Studio answered, and refused to load it
                return self.failed(job, target, f"cannot load {target.served_model}: {exc}",
                                   load_failed=True)  # fmt: skip
            except (OSError, KeyError, ValueError) as exc:
                return self.failed(job, target, f"cannot load {target.served_model}: {exc}")
            target = dataclasses.replace(target, served_model=instance)
        outcome = super().run(job, target)
        if outcome.status is not Status.OK:
            self.close()  # do not trust (or keep holding) an instance a failed job used
        return outcome

    def request(
        self, job: JobSpec, target: RunTarget, prompt: str, deadline: float
    ) -> tuple[RequestSample, list[PhaseWindow], dict[str, Any]]:
        assert target.url is not None
        body = {**chat_body(job, target, prompt), "stream": False}
        sent = time.monotonic()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no time left for another request")
        answer = post_json(target.url, "/api/v0/chat/completions", body, timeout_s=remaining)
        done = time.monotonic()
        stats, usage = answer["stats"], answer.get("usage", {})
        self._last_runtime = {
            "runtime": answer.get("runtime", {}),
            "model_info": answer.get("model_info", {}),
        }
        ttft = float(stats["time_to_first_token"])
        prompt_n = int(usage.get("prompt_tokens", 0))
        gen_n = int(usage.get("completion_tokens", 0))
        sample = RequestSample(
            prompt_tokens=prompt_n,
            gen_tokens=gen_n,
            ttft_s=ttft,
            ttft_source="server",
            e2e_s=done - sent,
            decode_tokens_per_s=float(stats["tokens_per_second"]),
            server_timings={k: float(v) for k, v in stats.items() if isinstance(v, int | float)},
        )
        # LM Studio's own timeline of the request, placed at its end on our clock.
        gen_s = float(stats.get("generation_time", 0.0))
        first = done - gen_s
        windows = [
            PhaseWindow(
                phase="prefill", start_s=max(sent, first - ttft), end_s=first, tokens=prompt_n
            ),  # fmt: skip
            PhaseWindow(phase="decode", start_s=first, end_s=done, tokens=gen_n),
        ]
        return sample, windows, answer

    def prefill_rate(self, sample: RequestSample) -> float | None:
        # LM Studio reports no prefill speed of its own; prompt / TTFT is its best estimate
        # and is what its UI implies, so it is kept, and labelled, in the details.
        return sample.prompt_tokens / sample.ttft_s if sample.ttft_s > 0 else None

    def load_time_s(self, first_payload: dict[str, Any]) -> float | None:
        return self._load_time_s

    def details(self, job: JobSpec, target: RunTarget) -> tuple[dict[str, Any], str | None]:
        runtime = self._last_runtime.get("runtime", {})
        details = {
            **self._last_runtime,
            "instance_id": target.served_model,
            "gpu_offload": self._offload,
            "pp_source": "prompt_tokens / LM Studio time_to_first_token (an estimate)",
        }
        name = str(runtime.get("name", ""))
        context = self._last_runtime.get("model_info", {}).get("context_length")
        if context is not None and int(context) != job.context:
            # e.g. the instance was unloaded meanwhile and LM Studio reloaded it with defaults
            return details, (
                f"LM Studio ran the model with context {context}, not the job's {job.context}"
            )
        if job.backend != "cpu" and job.backend not in name.lower():
            return details, (
                f"LM Studio ran runtime {name!r}, not a {job.backend} one: select it with "
                f"`lms runtime select` on this box, or submit the job as that backend"
            )
        return details, None
