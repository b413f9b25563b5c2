"""`orch report`, `orch status` and `orch campaigns` over stores of 1k/10k/100k results (issue 15).

Goals: report < 2 s and < 300 MB for table/md/csv/json, html < 10 s; status (with and without a
campaign) and campaigns < 1 s. Each store is built first by the tree that reads it, through its
Store API (benchmarks/report_store.py: mixed llama-bench and llama-server results with
telemetry series), and kept in --dir (named by store version) for later runs. Every command
runs as its own `python -m orchestrator` process, --repeats times, and prints wall seconds, CPU
seconds and peak RSS (the child's own, from wait4) as n, median [min-max], beside the goal.

`--against DIR` runs the same commands from another source tree of orch (the code before a
change: `git archive HEAD | tar -x -C /tmp/orch-head`), round-robin with this tree's, each on
the store its own tree built, and prints this/against ratios of the median wall time; it also
times this tree's migration (`Store.open`) of a copy of the other tree's store.

    .venv/bin/python benchmarks/report.py --sizes 1000 --repeats 3
    .venv/bin/python benchmarks/report.py --sizes 1000,10000 --against /tmp/orch-head
    .venv/bin/python benchmarks/report.py --sizes 100000 --formats table,json --repeats 1
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from report_store import CAMPAIGN

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GOAL_S = {"table": 2.0, "md": 2.0, "csv": 2.0, "json": 2.0, "html": 10.0, "status": 1.0,
          "status-campaign": 1.0, "campaigns": 1.0}  # fmt: skip
GOAL_MB = 300.0
NO_MEMORY_GOAL = ("html", "status", "status-campaign", "campaigns")


def run_once(argv: list[str], tree: Path) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MB) and CPU seconds (user + system: steadier than wall on a
    busy box) of one orch process run from source tree `tree`."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *argv],
        cwd=tree,  # `-m` puts the working folder first on sys.path: this tree's orch runs
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode:
        raise SystemExit(f"orch {' '.join(argv)} failed ({proc.returncode}): {err}")
    return wall, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime  # Linux: KiB


def build_store(tree: Path, folder: Path, size: int) -> tuple[Path, float]:
    """The store of `size` results written by `tree`'s Store API (named by its store version
    and its layout's source, which a version's unreleased drafts share; kept for later runs),
    and the seconds it took to build (0 when it was there)."""
    layout = next(
        f for f in ("store_layout.py", "store.py") if (tree / "orchestrator" / f).is_file()
    )
    digest = hashlib.sha256((tree / "orchestrator" / layout).read_bytes()).hexdigest()[:8]
    code = (
        "import sys, time; from pathlib import Path; "
        f"sys.path.insert(1, {str(HERE)!r}); "
        "from orchestrator.store import STORE_VERSION; from report_store import build; "
        f"p = Path({str(folder)!r}) / f'store-{size}-v{{STORE_VERSION}}-{digest}.db'; "
        "had = p.is_file(); "
        f"t = time.perf_counter(); build(p, {size}); "
        "print(p, 0.0 if had else time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True
    )
    path, seconds = out.stdout.split()
    return Path(path), float(seconds)


def migrate_copy(store: Path, folder: Path) -> float:
    """Seconds this tree's `Store.open` takes to migrate a copy of `store` (then removed)."""
    copy = folder / f"migrating-{store.name}"
    shutil.copyfile(store, copy)
    code = (
        "import time; from pathlib import Path; from orchestrator.store import Store; "
        f"t = time.perf_counter(); Store.open(Path({str(copy)!r})).close(); "
        "print(time.perf_counter() - t)"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return float(out.stdout)
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--formats", default="table,md,csv,json,html")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/orch-bench-report"))
    parser.add_argument("--against", type=Path, help="another orch source tree, side by side")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    trees = {"this": ROOT} | ({"against": args.against.resolve()} if args.against else {})
    missed = 0
    print(f"{'results':>8} {'command':<16} {'tree':<8} {'n':>2}  {'wall s':<22} "
          f"{'CPU s':<22} {'peak RSS MB':<26} goal")  # fmt: skip
    for size in (int(s) for s in args.sizes.split(",")):
        stores = {}
        for name, tree in trees.items():
            stores[name], built = build_store(tree, args.dir, size)
            size_mb = stores[name].stat().st_size / 1e6
            print(f"# {name}: {stores[name].name}, {size_mb:.0f} MB"
                  + (f", built in {built:.0f} s" if built else ""))  # fmt: skip
        if "against" in stores and stores["against"] != stores["this"]:
            print(f"# this tree migrates a copy of the against store in "
                  f"{migrate_copy(stores['against'], args.dir):.1f} s")  # fmt: skip
        commands = {f: ["report", CAMPAIGN, "--format", f] for f in args.formats.split(",")}
        commands.update({"status": ["status"], "status-campaign": ["status", CAMPAIGN],
                         "campaigns": ["campaigns"]})  # fmt: skip
        for command, argv in commands.items():
            runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trees}
            for _ in range(args.repeats):  # round-robin: both trees see the same load
                for name, tree in trees.items():
                    runs[name].append(run_once(["--store", str(stores[name]), *argv], tree))
            goal_s = GOAL_S[command]
            for name in trees:
                walls, rss = [r[0] for r in runs[name]], [r[1] for r in runs[name]]
                cpu = [r[2] for r in runs[name]]
                ok = statistics.median(walls) < goal_s and (
                    command in NO_MEMORY_GOAL or statistics.median(rss) < GOAL_MB
                )
                missed += name == "this" and not ok
                goal = f"< {goal_s:g} s" + ("" if command in NO_MEMORY_GOAL else
                                             f", < {GOAL_MB:g} MB")  # fmt: skip
                print(f"{size:>8} {command:<16} {name:<8} {len(walls):>2}  {spread(walls):<22} "
                      f"{spread(cpu):<22} {spread(rss):<26} {goal} "
                      f"{'met' if ok else 'MISSED'}")  # fmt: skip
            if "against" in runs:
                wall, cpu_s = (
                    [statistics.median(r[i] for r in runs["this"])
                     / statistics.median(r[i] for r in runs["against"]) for i in (0, 2)]
                )  # fmt: skip
                print(f"{size:>8} {command:<16} ratio this/against, median wall: {wall:.2f}, "
                      f"median CPU: {cpu_s:.2f}")  # fmt: skip
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
