"""`orch report`, `orch status` and `orch campaigns` over stores of 1k/10k/100k results (issue 15).

Goals: report < 2 s and < 300 MB for table/md/csv/json, html < 10 s; status and campaigns < 1 s.
Each store is built first through the Store API (benchmarks/report_store.py: mixed llama-bench
and llama-server results with telemetry series) and kept in --dir for later runs. Every command
runs as its own `python -m orchestrator` process, --repeats times, and prints wall seconds and
peak RSS (the child's own, from wait4) as n, median [min-max], beside the goal.

    .venv/bin/python benchmarks/report.py --sizes 1000 --repeats 3
    .venv/bin/python benchmarks/report.py --sizes 1000,10000,100000 --formats table,json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report_store import CAMPAIGN, build  # noqa: E402

GOAL_S = {"table": 2.0, "md": 2.0, "csv": 2.0, "json": 2.0, "html": 10.0, "status": 1.0,
          "campaigns": 1.0}  # fmt: skip
GOAL_MB = 300.0


def run_once(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one orch process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode:
        raise SystemExit(f"orch {' '.join(argv)} failed ({proc.returncode}): {err}")
    return wall, usage.ru_maxrss / 1024.0  # Linux: KiB


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--formats", default="table,md,csv,json,html")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/orch-bench-report"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    missed = 0
    print(f"{'results':>8} {'command':<10} {'n':>2}  {'wall s':<22} {'peak RSS MB':<26} goal")
    for size in (int(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        store = build(args.dir / f"store-{size}.db", size)
        built = time.perf_counter() - started
        print(f"# store of {size} results: {store.stat().st_size / 1e6:.0f} MB ({built:.0f} s)")
        commands = {f: ["report", CAMPAIGN, "--format", f] for f in args.formats.split(",")}
        commands.update(status=["status"], campaigns=["campaigns"])
        for name, argv in commands.items():
            runs = [run_once(["--store", str(store), *argv]) for _ in range(args.repeats)]
            walls, rss = [w for w, _ in runs], [m for _, m in runs]
            goal_s = GOAL_S.get(name, 2.0)
            ok = statistics.median(walls) < goal_s and (
                name in ("html", "status", "campaigns") or statistics.median(rss) < GOAL_MB
            )
            missed += not ok
            goal = f"< {goal_s:g} s" + ("" if name in ("html", "status", "campaigns") else
                                         f", < {GOAL_MB:g} MB")  # fmt: skip
            print(f"{size:>8} {name:<10} {len(runs):>2}  {spread(walls):<22} {spread(rss):<26} "
                  f"{goal} {'met' if ok else 'MISSED'}")  # fmt: skip
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
