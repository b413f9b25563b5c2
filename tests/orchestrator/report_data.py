"""A fixed campaign for report tests, shaped like the carve-out comparison people post.

GLM-4.7-Flash on one Strix Halo box ("halo") served by llama-server, Vulkan and ROCm, with a
512M and a 32G BIOS carve-out; each result carries per-request samples, the server's timings and
telemetry (GPU busy, copy engine, VRAM/GTT, APU package power, a chart series), as the worker
records them. Plus a load failure, a skipped job (the planner's OOM prediction) and a job still
waiting. Every number is fixed, so golden outputs are stable.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobs.result import EngineInfo, Measurement, RequestSample, RunResult, Status
from jobs.spec import JobSpec, Workload
from jobs.telemetry import MetricSummary, PhaseSummary, SourceStatus, Telemetry
from orchestrator.store import JobRow, Store

CAMPAIGN = "glm-carveout"
HOST = "halo"
MODEL = "glm-4.7-flash:q4_k_m"
PROMPT = "编写一个科技公司的官网的HTML"
STARTED = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
SKIP_REASON = "predicted OOM (needs 23.1 GB, has 0.5 GB)"
LOAD_ERROR = (
    "exit code 1\nllama_model_load: error loading model: unable to allocate Vulkan0 buffer\n"
    "main: error: failed to load model"
)

# (backend, vram_split) -> (decode tokens/s, prompt tokens/s, TTFT s, generated tokens,
#                           GPU busy %, copy engine busy %, VRAM GB, GTT GB, power W)
FIGURES = {
    ("vulkan", "512M"): (17.26, 410.0, 0.80, 6970, 70.0, 96.0, 0.45, 20.4, 62.0),
    ("vulkan", "32G"): (42.89, 505.0, 0.79, 6107, 90.0, 4.0, 21.3, 0.6, 88.0),
    ("rocm", "512M"): (15.28, 980.0, 0.31, 5262, 55.0, 40.0, 0.44, 20.1, 58.0),
    ("rocm", "32G"): (14.42, 1010.0, 0.30, 6351, 56.0, 3.0, 20.9, 0.5, 57.0),
}
# Relative wobble of the 5 repetitions (fixed, not random).
WOBBLE = (0.0, 0.012, -0.009, 0.004, -0.015)


def spec(backend: str, vram_split: str, context: int = 8192) -> JobSpec:
    return JobSpec(
        campaign=CAMPAIGN,
        host=HOST,
        engine="llama-server",
        model=MODEL,
        backend=backend,
        context=context,
        configuration={"vram_split": vram_split},
        workload=Workload(prompt_text=PROMPT, gen_tokens=8192, warmup_runs=1),
        repetitions=5,
        timeout_s=3600,
    )


def _requests(figures: tuple[float, ...]) -> list[RequestSample]:
    tg, pp, ttft, tokens = figures[:4]
    out = []
    for i, w in enumerate(WOBBLE):
        gen = int(tokens) + 37 * i
        out.append(
            RequestSample(
                prompt_tokens=21,
                gen_tokens=gen,
                ttft_s=round(ttft * (1 - w), 4),
                e2e_s=round(ttft + gen / tg, 3),
                decode_tokens_per_s=round(tg * (1 + w), 3),
                itl_s={"p50": round(1 / tg, 5)},
                server_timings={"prompt_n": 21, "prompt_per_second": round(pp * (1 - w / 2), 2)},
            )
        )
    return out


def _telemetry(figures: tuple[float, ...], decode_s: float, tokens: int) -> Telemetry:
    busy, copy, vram_gb, gtt_gb, power = figures[4:]
    decode = {
        "gpu_busy_pct": MetricSummary(mean=busy, peak=min(100.0, busy + 8), samples=50),
        "engine_dma_busy_pct": MetricSummary(mean=copy, peak=min(100.0, copy + 3), samples=50),
        "vram_used_bytes": MetricSummary(mean=vram_gb * 1e9, peak=vram_gb * 1e9, samples=50),
        "gtt_used_bytes": MetricSummary(mean=gtt_gb * 1e9, peak=gtt_gb * 1e9, samples=50),
        "power_w": MetricSummary(mean=power, peak=power + 9, samples=50),
        "rss_bytes": MetricSummary(mean=1.2e9, peak=1.3e9, samples=50),
    }
    energy = power * decode_s
    times = [round(0.5 * i, 1) for i in range(12)]
    return Telemetry(
        interval_s=0.1,
        samples=1200,
        sources=[
            SourceStatus(name="amdgpu", available=True, detail="card1", power_includes_cpu=True),
            SourceStatus(name="psutil", available=True),
        ],
        phases=[
            PhaseSummary(
                phase="prefill",
                start_s=0.2,
                end_s=1.0,
                tokens=21,
                metrics={"gpu_busy_pct": MetricSummary(mean=98.0, peak=100.0)},
            ),
            PhaseSummary(
                phase="decode",
                start_s=1.0,
                end_s=1.0 + decode_s,
                tokens=tokens,
                metrics=decode,
                energy_j=round(energy, 1),
                j_per_token=round(energy / tokens, 4),
                tokens_per_s_per_w=round(tokens / energy, 4),
            ),
        ],  # fmt: skip
        series={
            "t_s": times,
            "gpu_busy_pct": [0.0, 98.0] + [busy + (i % 3) for i in range(10)],
            "engine_dma_busy_pct": [0.0, 20.0] + [copy] * 10,
            "power_w": [12.0, power + 5] + [power + (i % 2) for i in range(10)],
            "vram_used_bytes": [0.3e9] + [vram_gb * 1e9] * 11,
            "gtt_used_bytes": [0.1e9] + [gtt_gb * 1e9] * 11,
        },
        energy_metric="power_w",
    )


def result(job: JobSpec, status: Status = Status.OK, error: str | None = None) -> RunResult:
    ok = status is Status.OK
    figures = FIGURES.get((job.backend, job.configuration["vram_split"]))
    requests = _requests(figures) if ok and figures else []
    measurements = []
    if requests:
        measurements = [
            Measurement(test="pp", n_prompt=21, n_gen=0,
                        samples_ts=[r.server_timings["prompt_per_second"] for r in requests]),
            Measurement(test="tg", n_prompt=0, n_gen=requests[0].gen_tokens,
                        samples_ts=[r.decode_tokens_per_s or 0.0 for r in requests]),
        ]  # fmt: skip
    tokens = requests[0].gen_tokens if requests else 0
    return RunResult(
        job_id=job.job_id,
        campaign=job.campaign,
        host=job.host,
        queue=job.queue,
        attempt=1,
        status=status,
        error=error,
        measurements=measurements,
        engine=EngineInfo(
            name="llama-server",
            backend=job.backend,
            binary=f"/opt/llama.cpp-{job.backend}/bin/llama-server",
            build_commit="b6123ab" if ok else None,
        )
        if status is not Status.SKIPPED
        else None,  # fmt: skip
        declared={"vram_split": job.configuration["vram_split"]},
        started_at=STARTED,
        finished_at=STARTED + timedelta(minutes=4),
        worker_version="0.1.0",
        job=job,
        requests=requests,
        telemetry=_telemetry(figures, tokens / figures[0], tokens) if ok and figures else None,
        load_time_s=(9.5 if job.backend == "vulkan" else 12.25) if ok else None,
    )


def campaign_rows() -> list[JobRow]:
    """4 ok jobs (2 backends x 2 carve-outs at 8K), a 198K context skipped at 512M, loaded
    and failed at 32G on Vulkan, and waiting on ROCm at 32G."""
    rows = [JobRow(spec(b, v), result(spec(b, v))) for b, v in FIGURES]
    big = 202_752
    rows.append(
        JobRow(spec("vulkan", "512M", big),
               result(spec("vulkan", "512M", big), Status.SKIPPED, SKIP_REASON))
    )  # fmt: skip
    rows.append(
        JobRow(spec("vulkan", "32G", big),
               result(spec("vulkan", "32G", big), Status.LOAD_FAILED, LOAD_ERROR))
    )  # fmt: skip
    rows.append(JobRow(spec("rocm", "32G", big), None))
    return rows


def fill_store(store: Store) -> None:
    """The campaign as `orch submit` and collection would leave it in the store."""
    store.record_campaign(CAMPAIGN, "matrix.yaml", "campaign: glm-carveout\n")
    for row in campaign_rows():
        store.record_job(row.spec)
        if row.result is not None:
            store.upsert_result(row.result)
