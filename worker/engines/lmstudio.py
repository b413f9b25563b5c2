"""LM Studio (port 1234), the app many of our users benchmark with by hand today; 0.4.0 or newer.

- Runtime: when worker.yaml names the `lms` CLI as the backend's binary, the backend label picks
  the LM Studio runtime (`lms runtime ls`; `vulkan` -> `llama.cpp-...-vulkan-...`, or the owner's
  pin in `engines.lmstudio.runtimes`), selected with `lms runtime select <name>@<version>` before
  the model is loaded. The selection the box had is put back when the engine closes (the next
  engine's job, worker shutdown). A loaded instance is reused only on the same runtime.
- Load: with `lms load KEY -y -c N --gpu max|off --identifier ID` when `lms` is named (load time
  measured around the command), after `lms load ... --estimate-only`: LM Studio's estimate is
  kept in the details, and a load it says will fail fails the job (load failed) with its
  numbers. Else `POST /api/v1/models/load` with `context_length`, `offload_kv_cache_to_gpu`
  (the job's kv_offload, else on for a GPU backend), `flash_attention` (when the job sets it)
  and `echo_load_config`. `lms load` has no flag for flash attention or the KV cache, so a job
  setting them on an lms-driven backend is refused with that reason. Either way, what LM
  Studio says it loaded (the echoed config, or the instance in `GET /api/v1/models`) is checked
  against the job: a different context, KV placement, flash attention or model fails the job
  with that evidence.
- Measure: `POST /api/v0/chat/completions` (not streamed). LM Studio 0.4 still documents v0, and
  only its answer carries `runtime` (name, version), `model_info.context_length` and
  `stats.generation_time`/`stop_reason`; the v1 `/api/v1/chat` stats have no runtime, so the
  runtime could not be verified. TTFT is LM Studio's own (`ttft_source: server`).
- Verify: the runtime LM Studio reports in each answer is checked against the backend label by
  jobs.backends (a `rocm` job that ran `...-vulkan-...` is MISLABELLED, with that evidence), and
  with `lms` it must also be the very runtime orch selected (another version fails the job).
Sources: lmstudio-ai/docs at c6854fb, lmstudio-ai/lms at 07b7252 (see lmstudio_rest.py,
lmstudio_cli.py and tests/fixtures/lmstudio/README.md).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from typing import Any

from jobs.backends import check_backend
from jobs.result import BackendCheck, EngineInfo, RequestSample, Status
from jobs.spec import JobSpec
from jobs.telemetry import PhaseWindow
from worker.engines import lmstudio_rest as rest
from worker.engines.base import EngineOutcome, RunTarget, register
from worker.engines.http_stream import HttpError, post_json
from worker.engines.lmstudio_cli import (
    Lms,
    LmsError,
    Runtime,
    choose_runtime,
    gpu_offload,
    label_matches,
    runtime_backend,
)
from worker.engines.served import ServedEngine, chat_body

log = logging.getLogger("orch.worker")

# The REST load API has no GPU offload setting: LM Studio decides, and the result says so.
_REST_OFFLOAD = "LM Studio's default (its REST load API has no offload setting)"


@dataclass(frozen=True)
class _Instance:
    """A model instance this worker loaded, and what it was loaded for."""

    url: str
    token: str | None
    model: str
    instance_id: str
    context: int
    runtime: str | None  # name@version selected for it (None: no lms, LM Studio's choice)
    offload: str
    lms: Lms | None
    options: tuple[str | None, bool | None] = (None, None)  # flash_attention, kv_offload


class _Refused(Exception):
    """The job cannot run as asked; `status` is what it ends as."""

    def __init__(self, message: str, status: Status, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.details = details


@register("lmstudio")
class LMStudio(ServedEngine):
    def __init__(self) -> None:
        self._instance: _Instance | None = None
        self._load_time_s: float | None = None
        self._loaded: dict[str, Any] = {}  # what LM Studio said it loaded, for the details
        self._answers: list[dict[str, Any]] = []  # runtime/model_info/stop of each answer
        self._estimate: dict[str, Any] = {}  # LM Studio's estimate of the last lms load
        # The runtimes selected on the box before orch selected any, per lms binary: put back
        # when the engine closes.
        self._restore: tuple[Lms, list[Runtime]] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        self._release()
        restore, self._restore = self._restore, None
        if restore is None:
            return
        lms, original = restore
        for runtime in original:
            try:
                lms.select(runtime)
            except (OSError, LmsError) as exc:
                log.error("could not put LM Studio's runtime back to %s: %s", runtime.spec, exc)

    def _release(self) -> None:
        """Unload the instance this worker loaded (none is left behind per job or model)."""
        instance, self._instance = self._instance, None
        if instance is None:
            return
        try:
            if instance.lms is not None:
                instance.lms.unload(instance.instance_id)
            else:
                rest.unload(instance.url, instance.token, instance.instance_id)
        except (OSError, HttpError, LmsError) as exc:
            # already unloaded (by the user, by a TTL) or the app is gone
            log.warning("LM Studio instance %s not unloaded: %s", instance.instance_id, exc)

    # -- load ---------------------------------------------------------------------------------

    def prepare(self, job: JobSpec, target: RunTarget) -> _Instance:
        """Select the runtime and load the model as the job asks (or reuse what is loaded)."""
        assert target.url is not None and target.served_model is not None
        url, token, model = target.url, target.api_key, target.served_model
        models = rest.list_models(url, token)  # also refuses an LM Studio older than 0.4
        if model not in rest.model_keys(models):
            have = ", ".join(rest.model_keys(models)) or "none"
            raise _Refused(f"LM Studio has no model {model!r} (have: {have})",
                           Status.LOAD_FAILED, {})  # fmt: skip
        try:
            lms = Lms(target.binary, url) if target.binary is not None else None
            runtime = self._runtime_for(job, target, lms) if lms is not None else None
            offload = gpu_offload(job.backend, job.gpu_layers) if lms is not None else _REST_OFFLOAD
        except LmsError as exc:  # the box cannot run this backend as configured
            raise _Refused(str(exc), Status.ERROR, {}) from None
        options = (job.flash_attention, job.kv_offload)
        if lms is not None and options != (None, None):
            raise _Refused(
                "`lms load` has no flash-attention or KV-cache flag (lmstudio-ai/lms 07b7252, "
                "src/subcommands/load.ts): only LM Studio's REST load sets them; leave lms out "
                f"of the {job.backend} backend in worker.yaml to load through REST (LM Studio's "
                "selected runtime then runs it), or drop flash_attention/kv_offload for this job",
                Status.ERROR, {},
            )  # fmt: skip
        wanted = (url, model, job.context, runtime.spec if runtime else None, offload, options)
        current = self._instance
        if current is not None and wanted == (current.url, current.model, current.context,
                                              current.runtime, current.offload,
                                              current.options):  # fmt: skip
            self._load_time_s = None
            return current
        self._release()
        if lms is not None and runtime is not None:
            if not runtime.selected:
                lms.select(runtime)
            self._check_estimate(lms, model, job.context, offload)
            instance_id = re.sub(r"[^A-Za-z0-9._-]", "-", f"orch-{model}-{job.context}")
            wall_s = lms.load(model, job.context, offload, instance_id)
            self._instance = _Instance(url, token, model, instance_id, job.context,
                                       runtime.spec, offload, lms)  # fmt: skip
            key, config = rest.instance_of(rest.list_models(url, token), instance_id)
            loaded = rest.Loaded(instance_id, wall_s, config, "GET /api/v1/models loaded_instances")
            if key != model:
                # `lms load -y` takes the first fuzzy match: it may be another model
                raise _Refused(
                    f"`lms load {model} -y` loaded {key or 'nothing'} as {instance_id}",
                    Status.LOAD_FAILED, {"lms_ps": self._ps(lms)},
                )  # fmt: skip
            kv_on_gpu = None  # lms load has no KV-placement flag: LM Studio's default applies
            self._loaded = {"lms_ps": self._ps(lms), "load_time_source": "lms load wall time",
                            "lms_estimate": self._estimate}  # fmt: skip
        else:
            kv_on_gpu = job.kv_offload if job.kv_offload is not None else job.backend != "cpu"
            flash = None if job.flash_attention is None else job.flash_attention == "on"
            loaded = rest.load(url, token, model, job.context, kv_on_gpu, flash)
            self._instance = _Instance(url, token, model, loaded.instance_id, job.context,
                                       None, offload, None, options)  # fmt: skip
            self._loaded = {"load_time_source": "LM Studio load_time_seconds"}
        self._load_time_s = loaded.load_time_s
        self._loaded.update(load_config=loaded.load_config, load_config_source=loaded.config_source)
        problem = rest.config_mismatch(
            loaded, job.context, kv_on_gpu,
            None if job.flash_attention is None else job.flash_attention == "on",
        )  # fmt: skip
        if problem:
            raise _Refused(problem, Status.ERROR, dict(self._loaded))
        return self._instance

    def _check_estimate(self, lms: Lms, model: str, context: int, offload: str) -> None:
        """LM Studio's own estimate before loading (`lms load --estimate-only`), kept in the
        details; a load it says will fail (by the box's guardrails) fails here, with its
        numbers, instead of being attempted. An lms that cannot estimate is noted, not fatal."""
        try:
            estimate = lms.estimate(model, context, offload)
        except (OSError, LmsError) as exc:
            self._estimate = {"unavailable": str(exc)[:300]}
            return
        self._estimate = estimate.as_details()
        if not estimate.fits:
            raise _Refused(
                f"LM Studio estimates that {model} at context {context} (--gpu {offload}) "
                f"will not load here: GPU {_size(estimate.gpu_bytes)}, total "
                f"{_size(estimate.total_bytes)} by its resource guardrails (lms load "
                "--estimate-only); lower the context, or loosen the guardrails in LM Studio",
                Status.LOAD_FAILED, {"lms_estimate": self._estimate},
            )  # fmt: skip

    def _runtime_for(self, job: JobSpec, target: RunTarget, lms: Lms) -> Runtime:
        runtimes = lms.runtimes()
        if self._restore is None:
            self._restore = (lms, [r for r in runtimes if r.selected])
        return choose_runtime(runtimes, job.backend, target.runtime_pin)

    @staticmethod
    def _ps(lms: Lms) -> list[dict[str, Any]] | str:
        try:
            return lms.ps()
        except (OSError, LmsError) as exc:
            return f"unavailable: {exc}"

    # -- run ----------------------------------------------------------------------------------

    def run(self, job: JobSpec, target: RunTarget) -> EngineOutcome:
        self._answers = []
        if target.url is not None and target.served_model is not None:
            try:
                instance = self.prepare(job, target)
            except _Refused as exc:
                self._release()  # never keep an instance that is not what the job asked for
                return self._refused(job, target, str(exc), exc.status, exc.details)
            except (HttpError, LmsError, rest.LoadRefused) as exc:
                self._release()
                status = Status.LOAD_FAILED if _answered(exc) else Status.ERROR
                return self._refused(job, target, f"cannot load {target.served_model}: {exc}",
                                     status, {})  # fmt: skip
            except (OSError, ValueError) as exc:
                self._release()
                return self._refused(job, target, f"cannot load {target.served_model}: {exc}",
                                     Status.ERROR, {})  # fmt: skip
            target = replace(target, served_model=instance.instance_id)
        outcome = super().run(job, target)
        if outcome.status is not Status.OK:
            self._release()  # do not trust (or keep holding) an instance a failed job used
        return outcome

    def _refused(
        self, job: JobSpec, target: RunTarget, error: str, status: Status, details: dict[str, Any]
    ) -> EngineOutcome:
        info = EngineInfo(name=self.name, backend=job.backend, binary=target.url or "",
                          details=details)  # fmt: skip
        return EngineOutcome(status, info, error=error)

    def request(
        self, job: JobSpec, target: RunTarget, prompt: str, deadline: float
    ) -> tuple[RequestSample, list[PhaseWindow], dict[str, Any]]:
        assert target.url is not None
        body = {**chat_body(job, target, prompt), "stream": False}
        sent = time.monotonic()
        remaining = deadline - sent
        if remaining <= 0:
            raise TimeoutError("no time left for another request")
        answer = post_json(target.url, "/api/v0/chat/completions", body, timeout_s=remaining,
                           token=target.api_key)  # fmt: skip
        done = time.monotonic()
        if not isinstance(answer, dict) or not isinstance(answer.get("stats"), dict):
            raise ValueError(f"LM Studio's answer has no `stats`: {str(answer)[:200]}")
        stats, usage = answer["stats"], answer.get("usage") or {}
        self._answers.append(
            {
                "runtime": answer.get("runtime") or {},
                "model_info": answer.get("model_info") or {},
                "stop_reason": stats.get("stop_reason"),
            }
        )
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

    # -- verify -------------------------------------------------------------------------------

    def details(self, job: JobSpec, target: RunTarget) -> tuple[dict[str, Any], str | None]:
        last = self._answers[-1] if self._answers else {}
        runtime = last.get("runtime") or {}
        instance = self._instance
        details: dict[str, Any] = {
            **self._loaded,
            "runtime": runtime,
            "model_info": last.get("model_info") or {},
            "stop_reasons": sorted({str(a.get("stop_reason")) for a in self._answers}),
            "instance_id": target.served_model,
            "runtime_selected": instance.runtime if instance else None,
            "gpu_offload": instance.offload if instance else None,
            "pp_source": "prompt_tokens / LM Studio time_to_first_token (an estimate)",
        }
        ran = sorted({_spec(a.get("runtime")) for a in self._answers})
        contexts = {
            int(c) for a in self._answers
            if isinstance(c := (a.get("model_info") or {}).get("context_length"), int | float)
        }  # fmt: skip
        if contexts - {job.context}:
            # e.g. the instance was unloaded meanwhile and LM Studio reloaded it with defaults
            return details, (
                f"LM Studio ran the model with context {sorted(contexts)}, not the job's "
                f"{job.context}"
            )
        if len(ran) > 1:
            return details, f"LM Studio switched runtime during the job: {', '.join(ran)}"
        selected = instance.runtime if instance is not None else None
        if selected is not None and ran != [selected]:
            said = ran[0] if ran else "no runtime"
            if ran and label_matches(job.backend, said.rpartition("@")[0]):
                # the right kind of build, but not the one selected: another version, or the
                # selection changed under the worker (the LM Studio UI)
                return details, f"LM Studio ran {said}, not {selected} that orch selected"
        return details, None

    def backend_check(self, job: JobSpec, details: dict[str, Any]) -> BackendCheck | None:
        """The runtime LM Studio says it ran, by the one rule (jobs.backends) for its label."""
        runtime = details.get("runtime") or {}
        name = str(runtime.get("name") or "")
        if not name:
            return None
        offload = details.get("gpu_offload")
        device = _DEVICES.get(runtime_backend(name), runtime_backend(name).upper())
        check = check_backend(
            job.backend,
            [device],
            None,
            gpu_layers_asked=job.gpu_layers,
            any_offloaded={"max": True, "off": False}.get(str(offload)),
            source=f"LM Studio runtime {_spec(runtime)}",
        )
        if check.verdict != "mismatch":
            return check
        advice = (
            f"; select a {job.backend} runtime with `lms runtime select <name>@<version>` "
            "(names from `lms runtime ls`) on this box, or name lms as this backend's binary "
            "in worker.yaml so that orch selects it"
            if details.get("runtime_selected") is None
            else f"; orch had selected {details['runtime_selected']} for {job.backend}"
        )
        return check.model_copy(update={"detail": check.detail + advice})


# LM Studio runtime kinds as llama.cpp's backend registry names them (jobs.backends).
_DEVICES = {"vulkan": "Vulkan", "rocm": "ROCm", "cuda": "CUDA", "metal": "MTL", "cpu": "CPU"}


def _size(n_bytes: int | None) -> str:
    return "not printed" if n_bytes is None else f"{n_bytes / 2**30:.2f} GiB"


def _spec(runtime: object) -> str:
    if not isinstance(runtime, dict):
        return "None@None"
    return f"{runtime.get('name')}@{runtime.get('version')}"


def _answered(exc: Exception) -> bool:
    """LM Studio (or lms) answered and refused the load, as opposed to not being reachable."""
    if isinstance(exc, HttpError):
        return exc.status is not None and exc.status not in (401, 403, 404)
    return True
