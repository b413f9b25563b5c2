"""llama.cpp's `llama-bench`: prompt processing (pp) and generation (tg) speed, per repetition.

The job's `context` sets the KV-cache depth at which both tests run: llama-bench sizes its
context to the test, so we pre-fill `context - prompt_tokens - gen_tokens` tokens (`-d`). The pp
test then ends at `context - gen_tokens` positions and the tg test at `context - prompt_tokens`:
both measure speed near the row's context. The depth is recorded in each Measurement.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jobs.backends import check_llama_bench_row, llama_cpp_offload_args
from jobs.engineoptions import option_mismatch
from jobs.progress import Phase
from jobs.result import (
    LLAMA_BENCH_DETAIL_FIELDS,
    EngineInfo,
    Status,
    measurement_from_llama_bench,
)
from jobs.spec import JobSpec
from worker.engines.base import Engine, EngineOutcome, RunTarget, local_files, register
from worker.engines.process import run_bounded

# stderr lines that mean the model never got to run (llama.cpp's own wording).
_LOAD_FAILURE = re.compile(
    r"failed to load model|error loading model|unable to load model|failed to allocate"
    r"|out of memory|ggml_backend_\w*alloc\w* failed|cannot allocate|failed to open",
    re.IGNORECASE,
)


@register("llama-bench")
class LlamaBench(Engine):
    def run(self, job: JobSpec, target: RunTarget) -> EngineOutcome:
        argv = self.argv(job, target)
        info = EngineInfo(name=self.name, backend=job.backend, binary=str(target.binary))
        # All repetitions run in one process: k of N is not known until it ends.
        target.on_phase(Phase.RUNNING, None, job.repetitions)
        try:
            proc = run_bounded(argv, target.timeout_s, target.on_process)
        except OSError as exc:
            return EngineOutcome(
                Status.ERROR, info, error=f"cannot start {target.binary}: {exc}", argv=argv
            )
        if proc.timed_out:
            return EngineOutcome(
                Status.TIMEOUT,
                info,
                error=f"killed after {target.timeout_s:.0f} s\n{proc.stderr_tail()}",
                argv=argv,
            )
        if proc.returncode != 0:
            status = Status.LOAD_FAILED if _LOAD_FAILURE.search(proc.stderr) else Status.ERROR
            return EngineOutcome(
                status,
                info,
                error=f"exit code {proc.returncode}\n{proc.stderr_tail()}",
                argv=argv,
            )
        try:
            rows = json.loads(proc.stdout)
            measurements = [measurement_from_llama_bench(row) for row in rows]
        except (ValueError, KeyError, TypeError) as exc:
            return EngineOutcome(
                Status.ERROR,
                info,
                error=f"unreadable llama-bench JSON ({exc}); stdout starts: {proc.stdout[:300]!r}",
                argv=argv,
            )
        if not measurements:
            return EngineOutcome(
                Status.ERROR, info, error="llama-bench printed no tests", argv=argv
            )
        info = _engine_info(info, rows[0])
        ran = ran_options(rows[0])
        info.details["engine_options"] = ran
        mismatch = option_mismatch(job, ran, _options_source(rows[0]))
        if mismatch is not None:
            return EngineOutcome(Status.ERROR, info, error=mismatch, argv=argv)
        check = check_llama_bench_row(job.backend, rows[0], gpu_layers_asked=job.gpu_layers)
        return EngineOutcome(
            Status.OK, info, measurements=measurements, argv=argv, backend_check=check
        )

    @staticmethod
    def argv(job: JobSpec, target: RunTarget) -> list[str]:
        binary, model = local_files(target)
        work = job.workload
        depth = max(0, job.context - work.prompt_tokens - work.gen_tokens)
        argv = [
            str(binary), "-m", str(model),
            "-p", str(work.prompt_tokens), "-n", str(work.gen_tokens), "-d", str(depth),
            "-r", str(job.repetitions), "-o", "json",
            # Always explicit: llama-bench's default (-1) offloads every layer to any GPU the
            # build finds, so a `cpu` job on a GPU build would not run on the CPU.
            *llama_cpp_offload_args(job.backend, job.gpu_layers),
        ]  # fmt: skip
        # 1/0: what every llama-bench takes (newer ones also take on/off/auto).
        if job.flash_attention is not None:
            argv += ["-fa", "1" if job.flash_attention == "on" else "0"]
        if job.kv_offload is not None:
            argv += ["-nkvo", "0" if job.kv_offload else "1"]
        if target.threads:
            argv += ["-t", str(target.threads)]
        return argv


def ran_options(row: dict[str, Any]) -> dict[str, str | bool | None]:
    """What llama-bench says it ran with: `flash_attn` 1/0/-1 (auto; older builds print a
    bool) and `no_kv_offload`, in the job's spelling; None where the row does not say."""
    fa = row.get("flash_attn")
    nkvo = row.get("no_kv_offload")
    flash: str | None = None
    if isinstance(fa, bool | int):
        flash = {1: "on", 0: "off", -1: "auto"}.get(int(fa), str(fa))
    return {"flash_attention": flash, "kv_offload": (not nkvo) if isinstance(nkvo, bool) else None}


def _options_source(row: dict[str, Any]) -> str:
    return (f"llama-bench json: flash_attn {row.get('flash_attn')!r}, "
            f"no_kv_offload {row.get('no_kv_offload')!r}")  # fmt: skip


def _engine_info(info: EngineInfo, row: dict[str, Any]) -> EngineInfo:
    return info.model_copy(
        update={
            "build_commit": row.get("build_commit"),
            "build_number": row.get("build_number"),
            "details": {key: row[key] for key in LLAMA_BENCH_DETAIL_FIELDS if key in row},
        }
    )
