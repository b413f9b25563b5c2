"""Result stores for benchmarks/report.py, written through the Store API as collection would.

A lab campaign: hosts x carve-outs x backends x models x contexts, half llama-bench, half
llama-server, `jobs_per_cell` jobs per configuration (re-submissions of the same configuration
with another timeout: other job ids, the same axes, so the report pools their samples as it
does for any campaign that ran a configuration more than once). Every result is shaped like a
worker's: llama-bench with 10 repetitions and a "run" phase, llama-server with 8 requests,
per-request timings and prefill/decode phases; both with telemetry summaries and a chart series
(a llama-bench result is ~5 KB of JSON, a llama-server one ~17 KB, as measured in
/work/shared/MEASUREMENTS.md). Numbers come from a seeded RNG: the same store every time.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jobs.result import EngineInfo, Measurement, RequestSample, RunResult, Status
from jobs.spec import JobSpec, Workload
from jobs.telemetry import MetricSummary, PhaseSummary, SourceStatus, Telemetry
from orchestrator.store import Store

CAMPAIGN = "lab"
HOSTS = ("halo", "laptop", "desk", "mini")
SPLITS = ("512M", "32G")
BACKENDS = ("vulkan", "rocm", "cpu")
MODELS = ("qwen3-8b:q4_k_m", "glm-4.7-flash:q4_k_m", "gemma-3-12b:q4_0")
CONTEXTS = (4096, 32768)
ENGINES = ("llama-bench", "llama-server")
GRID = len(HOSTS) * len(SPLITS) * len(BACKENDS) * len(MODELS) * len(CONTEXTS) * len(ENGINES)
STARTED = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
SERIES_POINTS = {"llama-bench": 40, "llama-server": 140}


def _configs() -> list[tuple[str, str, str, str, int, str]]:
    return [
        (h, s, b, m, c, e)
        for h in HOSTS
        for s in SPLITS
        for b in BACKENDS
        for m in MODELS
        for c in CONTEXTS
        for e in ENGINES
    ]


def _spec(config: tuple[str, str, str, str, int, str], copy: int) -> JobSpec:
    host, split, backend, model, context, engine = config
    server = engine == "llama-server"
    return JobSpec(
        campaign=CAMPAIGN,
        host=host,
        engine=engine,
        model=model,
        backend=backend,
        context=context,
        configuration={"vram_split": split},
        workload=Workload(prompt_tokens=512, gen_tokens=128, warmup_runs=1 if server else 0),
        repetitions=8 if server else 10,
        timeout_s=3600 + copy,
    )


def _series(rng: random.Random, busy: float, power: float, n: int) -> dict[str, list[float | None]]:
    return {
        "t_s": [round(0.1 * i, 1) for i in range(n)],
        "gpu_busy_pct": [round(busy + rng.uniform(-5, 5), 1) for _ in range(n)],
        "engine_dma_busy_pct": [round(rng.uniform(0, 9), 1) for _ in range(n)],
        "power_w": [round(power + rng.uniform(-4, 4), 2) for _ in range(n)],
        "vram_used_bytes": [float(int(8e9 + rng.uniform(0, 1e8))) for _ in range(n)],
        "gtt_used_bytes": [float(int(2e8 + rng.uniform(0, 1e7))) for _ in range(n)],
        "rss_bytes": [float(int(1.1e9 + rng.uniform(0, 1e7))) for _ in range(n)],
    }


def _summary(mean: float, spread: float) -> MetricSummary:
    return MetricSummary(mean=round(mean, 2), peak=round(mean + spread, 2), samples=50)


def _telemetry(
    rng: random.Random, phases: list[PhaseSummary], busy: float, power: float, points: int
) -> Telemetry:
    return Telemetry(
        interval_s=0.1,
        samples=points * 4,
        sources=[
            SourceStatus(name="amdgpu", available=True, detail="card1", power_includes_cpu=True),
            SourceStatus(name="psutil", available=True),
        ],
        phases=phases,
        series=_series(rng, busy, power, points),
        energy_metric="power_w",
        sampler_cpu_s=0.05,
        sampler_cpu_pct=0.3,
    )


def _phase_metrics(rng: random.Random, busy: float, power: float) -> dict[str, MetricSummary]:
    return {
        "gpu_busy_pct": _summary(busy, 5),
        "engine_dma_busy_pct": _summary(rng.uniform(0, 9), 2),
        "vram_used_bytes": _summary(8e9, 1e8),
        "gtt_used_bytes": _summary(2e8, 1e7),
        "power_w": _summary(power, 6),
        "rss_bytes": _summary(1.1e9, 1e7),
        "gpu_temp_c": _summary(61, 4),
    }


def result(spec: JobSpec, rng: random.Random) -> RunResult:
    """A worker's result for `spec` (about one in 40 failed to load, as real campaigns do)."""
    base = {"vulkan": 40.0, "rocm": 36.0, "cpu": 9.0}[spec.backend]
    tg, pp = base * rng.uniform(0.8, 1.2), base * 25 * rng.uniform(0.8, 1.2)
    busy, power = rng.uniform(40, 95), rng.uniform(30, 90)
    common: dict[str, Any] = {
        "job_id": spec.job_id, "campaign": spec.campaign, "host": spec.host,
        "queue": spec.queue, "attempt": 1, "job": spec, "worker_version": "0.1.0",
        "started_at": STARTED, "finished_at": STARTED + timedelta(seconds=40),
        "declared": {"vram_split": spec.configuration["vram_split"]},
    }  # fmt: skip
    if rng.random() < 0.025:
        return RunResult(
            status=Status.LOAD_FAILED,
            error="exit code 1\nllama_model_load: error loading model: unable to allocate buffer",
            **common,
        )
    reps = spec.repetitions
    tg_samples = [round(tg * rng.gauss(1, 0.02), 3) for _ in range(reps)]
    pp_samples = [round(pp * rng.gauss(1, 0.02), 2) for _ in range(reps)]
    if spec.engine == "llama-bench":
        details = {"cpu_info": "AMD RYZEN AI MAX+ 395", "gpu_info": "Radeon 8060S",
                   "backends": spec.backend, "model_filename": f"/models/{spec.model}.gguf",
                   "model_type": "qwen3 8B Q4_K - Medium", "model_size": 4_680_000_000,
                   "n_batch": 2048, "n_ubatch": 512, "n_threads": 16,
                   "n_gpu_layers": 99}  # fmt: skip
        run = PhaseSummary(
            phase="run", start_s=0.5, end_s=14.0, tokens=reps * 640,
            metrics=_phase_metrics(rng, busy, power), energy_j=round(power * 13.5, 1),
        )  # fmt: skip
        return RunResult(
            status=Status.OK,
            measurements=[
                Measurement(
                    test="pp",
                    n_prompt=512,
                    n_gen=0,
                    samples_ts=pp_samples,
                    samples_ns=[int(512e9 / x) for x in pp_samples],
                ),
                Measurement(
                    test="tg",
                    n_prompt=0,
                    n_gen=128,
                    samples_ts=tg_samples,
                    samples_ns=[int(128e9 / x) for x in tg_samples],
                ),
            ],  # fmt: skip
            engine=EngineInfo(
                name="llama-bench",
                backend=spec.backend,
                binary="/opt/llama.cpp/bin/llama-bench",
                build_commit="b6123ab",
                build_number=6123,
                details=details,
            ),  # fmt: skip
            argv=["llama-bench", "-m", f"/models/{spec.model}.gguf", "-r", str(reps), "-o", "json"],
            telemetry=_telemetry(rng, [run], busy, power, SERIES_POINTS[spec.engine]),
            load_time_s=round(rng.uniform(2, 12), 2),
            **common,
        )
    requests = [
        RequestSample(
            prompt_tokens=512, gen_tokens=128, ttft_s=round(512 / p, 4),
            e2e_s=round(512 / p + 128 / t, 3), decode_tokens_per_s=t,
            itl_s={"p50": round(1 / t, 5), "p90": round(1.1 / t, 5), "p99": round(1.3 / t, 5)},
            server_timings={"prompt_n": 512, "prompt_per_second": p, "predicted_n": 128,
                            "predicted_per_second": t, "prompt_ms": 512e3 / p},
        )
        for t, p in zip(tg_samples, pp_samples, strict=True)
    ]  # fmt: skip
    phases = [PhaseSummary(phase="prefill", start_s=0.5, end_s=1.0, tokens=512,
                           metrics={"gpu_busy_pct": _summary(98, 2)})]  # fmt: skip
    for i in range(reps):
        start = 1.0 + i * 4
        phases.append(
            PhaseSummary(
                phase="decode",
                start_s=start,
                end_s=start + 3.5,
                tokens=128,
                metrics=_phase_metrics(rng, busy, power),
                energy_j=round(power * 3.5, 1),
                j_per_token=round(power * 3.5 / 128, 4),
                tokens_per_s_per_w=round(128 / (power * 3.5), 4),
            )  # fmt: skip
        )
    return RunResult(
        status=Status.OK,
        measurements=[
            Measurement(test="pp", n_prompt=512, n_gen=0, samples_ts=pp_samples),
            Measurement(test="tg", n_prompt=0, n_gen=128, samples_ts=tg_samples),
        ],
        engine=EngineInfo(
            name="llama-server",
            backend=spec.backend,
            binary="/opt/llama.cpp/bin/llama-server",
            build_commit="b6123ab",
        ),
        argv=["llama-server", "-m", f"/models/{spec.model}.gguf", "--port", "8080"],
        requests=requests,
        telemetry=_telemetry(rng, phases, busy, power, SERIES_POINTS[spec.engine]),
        load_time_s=round(rng.uniform(2, 12), 2),
        **common,
    )


def build(path: Path, jobs: int, seed: int = 15) -> Path:
    """A store at `path` holding one campaign of `jobs` collected results (kept if present)."""
    if path.is_file():
        return path
    rng = random.Random(seed)
    configs = _configs()
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    store = Store.open(partial)
    store.record_campaign(CAMPAIGN, "lab.yaml", "campaign: lab\n")
    for start in range(0, jobs, 1000):
        with store.transaction():
            for i in range(start, min(jobs, start + 1000)):
                spec = _spec(configs[i % len(configs)], i // len(configs))
                store.record_job(spec)
                store.upsert_result(result(spec, rng))
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(str(partial) + suffix).unlink(missing_ok=True)
    partial.rename(path)
    return path
