"""How long an `orch` command takes to start: the goal is under 0.3 s for any command.

Times, as whole processes, `orch --help` (which also lists the box-side commands, found by
entry point), `orch worker --help` and `orch status` with nothing to do (an empty store, no
broker, no one-box service), beside `python -c pass` with the same interpreter (its start-up and
site, the floor no command can go below). The commands run round-robin, so a busy moment of the
machine falls on all of them alike; each gets a warm-up run first (disk cache). Prints per
command n, median [min-max] of the wall time, the median minus the floor (orch's own share)
and the median CPU time (user + system of the child: what a busy machine inflates least), then
which heavy modules each command imported (one run of the same command inside a probe).

`--against DIR` runs the same commands from another source tree of orch (e.g. `git archive
HEAD | tar -x -C DIR`, the code before a change) in the same round-robin, both trees as
`python -m orchestrator` run from their root, and prints the ratio of the medians.

    .venv/bin/python benchmarks/startup.py              # 20 runs each
    .venv/bin/python benchmarks/startup.py --repeats 50 --json
    .venv/bin/python benchmarks/startup.py --against /tmp/orch-head

It exits 1 when a command's median wall time is over the goal.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GOAL_S = 0.3
# Modules that no command should pay for before it needs them (issue 15).
HEAVY = (
    "numpy", "gguf", "matplotlib", "paramiko", "fabric", "invoke", "celery", "kombu", "redis",
    "pydantic", "tabulate", "yaml", "psutil", "pynvml", "importlib.metadata",
)  # fmt: skip
COMMANDS = {
    "orch --help": ["--help"],
    "orch worker --help": ["worker", "--help"],
    "orch status (nothing to do)": ["status"],
}
BASELINE = "python -c pass"

# Runs `orch ARGS...` in this interpreter, then prints the heavy modules it imported.
_PROBE = """
import json, sys
args, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["orch", *args]
try:
    from orchestrator.cli import main
    main()
except SystemExit:
    pass
finally:
    print(json.dumps(sorted(m for m in heavy if m in sys.modules)), file=sys.stderr)
"""


def orch_argv() -> list[str]:
    """The installed `orch` script beside this interpreter (what a user runs), else `-m`."""
    script = Path(sys.executable).parent / "orch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator"]


def quiet_env(root: Path) -> dict[str, str]:
    """An environment with an empty store and no broker or one-box service to find, and
    bytecode cached (in `root`, not in the trees) as an installed orch has it: without it,
    every run compiles every module it imports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env |= {"ORCH_STORE": str(root / "orch.db"), "ORCH_LOCAL_DIR": str(root / "local")}
    env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    return env


def run_s(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run of `argv`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def loaded_modules(args: list[str], env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args), json.dumps(HEAVY)],
        cwd=Path(__file__).resolve().parent.parent,
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    found: list[str] = json.loads(done.stderr.strip().splitlines()[-1])
    return found


def measure(repeats: int, root: Path, against: Path | None) -> dict[str, list[tuple[float, float]]]:
    env = quiet_env(root)
    here = Path(__file__).resolve().parent.parent
    runs: dict[str, tuple[list[str], Path | None]] = {
        BASELINE: ([sys.executable, "-c", "pass"], None)
    }
    if against is None:
        runs |= {name: (orch_argv() + args, None) for name, args in COMMANDS.items()}
    else:  # both trees alike: `python -m orchestrator` from the tree's root finds its code first
        module = [sys.executable, "-m", "orchestrator"]
        for name, args in COMMANDS.items():
            runs[name] = (module + args, here)
            runs[f"{name} [against]"] = (module + args, against)
    for argv, cwd in runs.values():  # warm-up: reads the files, writes their bytecode
        run_s(argv, env, cwd)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (argv, cwd) in runs.items():
            times[name].append(run_s(argv, env, cwd))
    return times


def _row(
    runs: list[tuple[float, float]], floor_s: float, modules: list[str] | None
) -> dict[str, Any]:
    walls, cpus = [wall for wall, _ in runs], [cpu for _, cpu in runs]
    row: dict[str, Any] = {
        "n": len(runs),
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "max_s": max(walls),
        "over_floor_s": statistics.median(walls) - floor_s,
        "cpu_median_s": statistics.median(cpus),
        "cpu_min_s": min(cpus),
        "cpu_max_s": max(cpus),
    }
    if modules is not None:
        row["heavy_modules"] = modules
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="runs of each command")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--against", type=Path, help="another orch source tree to time side by side"
    )  # fmt: skip
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="orch-startup-") as tmp:
        times = measure(opts.repeats, Path(tmp), opts.against)
        modules = {
            name: loaded_modules(args, quiet_env(Path(tmp))) for name, args in COMMANDS.items()
        }
    floor = statistics.median(wall for wall, _cpu in times[BASELINE])
    rows = {name: _row(runs, floor, modules.get(name)) for name, runs in times.items()}
    if opts.against is not None:
        for name in COMMANDS:
            rows[name]["ratio_to_against"] = (
                rows[name]["median_s"] / rows[f"{name} [against]"]["median_s"]
            )
    over = [name for name in COMMANDS if rows[name]["median_s"] >= GOAL_S]
    if opts.json:
        print(json.dumps({"goal_s": GOAL_S, "commands": rows, "over_goal": over}, indent=2))
        return 1 if over else 0
    print(f"start-up, {opts.repeats} runs each, round-robin ({os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at the end):")  # fmt: skip
    for name, row in rows.items():
        print(
            f"  {name:40s} n={row['n']}  wall median {row['median_s'] * 1000:6.1f} ms "
            f"[{row['min_s'] * 1000:.1f}-{row['max_s'] * 1000:.1f}]"
            + ("" if name == BASELINE else f" (+{row['over_floor_s'] * 1000:.1f} over the floor)")
            + f", CPU median {row['cpu_median_s'] * 1000:.1f} ms "
            f"[{row['cpu_min_s'] * 1000:.1f}-{row['cpu_max_s'] * 1000:.1f}]"
        )
    for name in COMMANDS if opts.against is not None else ():
        print(f"  {name}: this tree / --against, median wall: {rows[name]['ratio_to_against']:.2f}")
    for name in COMMANDS:
        print(f"  {name}: heavy modules imported: {', '.join(modules[name]) or 'none'}")
    verdict = f"over the {GOAL_S:g} s goal: {', '.join(over)}" if over else "all under"
    print(f"goal: every command under {GOAL_S:g} s: {verdict}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
