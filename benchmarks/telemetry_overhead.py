"""How much CPU the telemetry sampler itself uses: the goal is under 0.5% of one core at 10 Hz.

Runs the real sampler with every default source on this box, watching a stand-in engine process
(an idle child, so the per-process sources do their full work), for `--seconds` per repetition,
and prints the sampler's own CPU (`Telemetry.sampler_cpu_pct`: thread CPU time of the sampling
thread plus the baseline and last samples, over the sampled wall time) with n, mean, spread.
Also measures the floor: the same sampler with no source at all, i.e. the cost of waking a
Python thread `1/interval` times a second on this machine (on VMs most of the total). Then
times each source's sample() alone, back to back (warm caches, so far below its in-run share).

    .venv/bin/python benchmarks/telemetry_overhead.py --seconds 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from worker.telemetry import Sampler, default_sources

GOAL_PCT = 0.5


@dataclass
class RunStats:
    samples: int
    sampler_cpu_s: float
    sampler_cpu_pct: float
    sources: list[str]
    metrics: list[str]


def run_once(seconds: float, interval_s: float, root: Path, empty: bool = False) -> RunStats:
    engine = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds + 5})"])
    try:
        sampler = Sampler([] if empty else default_sources(root), interval_s=interval_s)
        with sampler:
            sampler.watch(engine.pid)
            time.sleep(seconds)
        telemetry = sampler.summarize()
    finally:
        engine.kill()
        engine.wait()
    return RunStats(
        samples=telemetry.samples,
        sampler_cpu_s=telemetry.sampler_cpu_s,
        sampler_cpu_pct=telemetry.sampler_cpu_pct,
        sources=[s.name for s in telemetry.sources if s.available],
        metrics=sorted(k for k in telemetry.series if k != "t_s"),
    )


def per_source_cost(root: Path, calls: int) -> dict[str, float]:
    """Microseconds of CPU per sample() call, each available source alone."""
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    costs: dict[str, float] = {}
    try:
        for source in default_sources(root):
            if not source.probe().available:
                continue
            source.watch(engine.pid)
            source.sample(time.monotonic())
            start = time.thread_time()
            for _ in range(calls):
                source.sample(time.monotonic())
            costs[source.name] = (time.thread_time() - start) / calls * 1e6
            source.close()
    finally:
        engine.kill()
        engine.wait()
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("--root", type=Path, default=Path("/"), help="filesystem root to read")
    parser.add_argument("--calls", type=int, default=500, help="sample() calls per source")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args()

    runs = [run_once(args.seconds, args.interval, args.root) for _ in range(args.repeats)]
    pcts = [run.sampler_cpu_pct for run in runs]
    floor = run_once(args.seconds, args.interval, args.root, empty=True).sampler_cpu_pct
    costs = per_source_cost(args.root, args.calls)
    summary = {
        "interval_s": args.interval,
        "seconds": args.seconds,
        "n": len(pcts),
        "sampler_cpu_pct": pcts,
        "mean_pct": statistics.fmean(pcts),
        "stdev_pct": statistics.stdev(pcts) if len(pcts) > 1 else 0.0,
        "min_pct": min(pcts),
        "max_pct": max(pcts),
        "goal_pct": GOAL_PCT,
        "floor_pct_no_source": floor,
        "per_source_us_per_sample": costs,
        "runs": [asdict(run) for run in runs],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"sources: {', '.join(runs[0].sources)}")
        print(f"metrics: {', '.join(runs[0].metrics)}")
        for i, run in enumerate(runs, 1):
            print(
                f"run {i}: {run.samples} samples in {args.seconds:g} s, "
                f"sampler CPU {run.sampler_cpu_s * 1000:.1f} ms = "
                f"{run.sampler_cpu_pct:.3f}% of one core"
            )
        print(
            f"sampler_cpu_pct at {1 / args.interval:g} Hz: n={len(pcts)} "
            f"mean={summary['mean_pct']:.3f}% stdev={summary['stdev_pct']:.3f} "
            f"min={min(pcts):.3f}% max={max(pcts):.3f}% (goal < {GOAL_PCT}%)"
        )
        print(f"floor (the sampler thread with no source): {floor:.3f}% of one core")
        for name, micros in costs.items():
            pct = micros / 1e6 / args.interval * 100
            print(f"  {name:<11} {micros:8.1f} µs CPU per sample = {pct:.3f}% of a core")
    return 0 if max(pcts) < GOAL_PCT else 1


if __name__ == "__main__":
    sys.exit(main())
