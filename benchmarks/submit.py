"""`orch submit` of an N-job matrix vs a bare kombu publish loop of the same messages (issue 15).

Goal: 10,000 jobs in under 2 s wall, 100,000 in under 20 s, memory flat in the job count
beyond the matrix itself. Against a real Valkey (the embedded broker, AOF on, as the one-box
service runs it) with fake registered workers (their inventories, with model shapes so the
planner runs), each repetition, alternated:

- orch: `python -m orchestrator submit MATRIX --json` in a child process, wall time from
  spawn to exit (start-up, matrix expansion, checks, planning, publishing, the store), and
  the child's peak RSS;
- matrix: a child that only loads and expands the same matrix (`load_matrix_file`): the peak
  RSS of the matrix itself, which submit's is compared with;
- bare: a child that publishes the very messages orch queued (read back from the queues)
  with one kombu `Producer.publish` per message over one connection, timed around the loop
  only (no start-up, no expansion: the floor a plain kombu client would pay for the queueing
  alone).

Prints per size n, median [min-max] of each, the ratio orch/bare, and whether the goal holds.

    .venv/bin/python benchmarks/submit.py --jobs 1000 --repeats 3
    .venv/bin/python benchmarks/submit.py --jobs 10000 100000 --repeats 3 --json
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
from pathlib import Path
from typing import Any

import redis

from jobs.inventory import WorkerInventory
from jobs.modelshape import ModelShape
from jobs.protocol import INVENTORY_KEY
from orchestrator.embedded import EmbeddedBroker

GOAL_S = {10_000: 2.0, 100_000: 20.0}
ROOT = Path(__file__).resolve().parent.parent
MODELS = 10
WORKLOADS = 10
SHAPE = ModelShape(
    architecture="llama", n_layer=16, n_embd=2048, n_head=32, n_head_kv_per_layer=(8,) * 16,
    key_length=64, value_length=64, n_ff=8192, n_vocab=32000, context_length=131072,
    expert_count=None, expert_used_count=None, expert_ff=None, weight_bytes=700_000_000,
    file_bytes=700_000_000,
)  # fmt: skip

_BARE = """
import json, sys, time
from kombu import Connection, Producer
from jobs.protocol import celery_settings
url, path = sys.argv[1], sys.argv[2]
todo = []
for line in open(path):
    queue, raw = json.loads(line)
    m = json.loads(raw)
    import base64
    body = json.loads(base64.b64decode(m["body"]))
    p = m["properties"]
    todo.append((queue, body, m["headers"], p["correlation_id"], p["reply_to"]))
with Connection(url, transport_options=celery_settings()["broker_transport_options"]) as conn:
    producer = Producer(conn.default_channel)
    start = time.perf_counter()
    for queue, body, headers, correlation_id, reply_to in todo:
        producer.publish(body, exchange="", routing_key=queue, serializer="json",
                         headers=headers, correlation_id=correlation_id, reply_to=reply_to,
                         delivery_mode=2, priority=0)
    print(time.perf_counter() - start)
"""
_IMPORTS_ONLY = "import orchestrator.cli, orchestrator.submit"
_MATRIX_ONLY = """
import sys
from pathlib import Path
from orchestrator.matrixfile import load_matrix_file
print(len(load_matrix_file(Path(sys.argv[1])).jobs))
"""


def shape_of(n_jobs: int) -> tuple[int, int]:
    """(hosts, contexts) so that hosts x MODELS x contexts x WORKLOADS == n_jobs."""
    per_host = MODELS * WORKLOADS
    if n_jobs % per_host:
        raise SystemExit(f"--jobs must be a multiple of {per_host}")
    rest = n_jobs // per_host
    hosts = max(h for h in range(1, 11) if rest % h == 0)
    return hosts, rest // hosts


def matrix_text(n_jobs: int) -> str:
    hosts, contexts = shape_of(n_jobs)
    workloads = "\n".join(
        f"  w{i}: {{prompt_tokens: {16 + i}, gen_tokens: 8}}" for i in range(WORKLOADS)
    )
    return (
        f"campaign: bench-{n_jobs}\n"
        f"hosts: [{', '.join(f'box{i}' for i in range(hosts))}]\n"
        f"workloads:\n{workloads}\n"
        "matrix:\n"
        f"  model: [{', '.join(f'm{i}' for i in range(MODELS))}]\n"
        "  backend: [cpu]\n"
        f"  context: [{', '.join(str(1024 + 64 * i) for i in range(contexts))}]\n"
        f"  workload: [{', '.join(f'w{i}' for i in range(WORKLOADS))}]\n"
    )


def register(client: Any, hosts: int) -> None:
    """What `hosts` running workers would have registered (fresh heartbeats)."""
    now = float(client.time()[0])
    for i in range(hosts):
        inventory = WorkerInventory(
            host=f"box{i}", queue=f"orch.box{i}.default", engines={"llama-bench": ["cpu"]},
            models=[f"m{j}" for j in range(MODELS)],
            model_shapes={f"m{j}": SHAPE for j in range(MODELS)},
            version="bench", instance_id="bench", pid=1, started_at=now, last_seen=now,
        )  # fmt: skip
        client.set(INVENTORY_KEY.format(host=f"box{i}"), inventory.model_dump_json())


def timed_child(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, peak RSS MB, stdout) of a child process."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.PIPE, cwd=ROOT)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err[-3000:]}")
        out.seek(0)
        return wall, usage.ru_maxrss / 1024, out.read().decode()


def queued_messages(client: Any, path: Path) -> int:
    """Write every queued message, oldest first, as (queue, raw) JSON lines; empty the queues."""
    count = 0
    with path.open("w") as out:
        for key in sorted(client.scan_iter(match="orch.*", _type="list")):
            queue = key.decode()
            for raw in reversed(client.lrange(key, 0, -1)):  # LPUSHed: the oldest is last
                out.write(json.dumps([queue, raw.decode()]) + "\n")
                count += 1
    return count


def one_size(n_jobs: int, repeats: int, work: Path) -> dict[str, Any]:
    hosts, _contexts = shape_of(n_jobs)
    matrix = work / f"matrix-{n_jobs}.yaml"
    matrix.write_text(matrix_text(n_jobs))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs: dict[str, list[float]] = {"orch_s": [], "orch_rss_mb": [], "bare_s": [],
                                    "matrix_rss_mb": [], "startup_s": []}  # fmt: skip
    with EmbeddedBroker(work / f"broker-{n_jobs}") as broker:
        client = redis.Redis.from_url(broker.url)
        for rep in range(repeats):
            client.flushall()
            register(client, hosts)
            store = work / f"store-{n_jobs}-{rep}.db"
            wall, rss, out = timed_child(
                [sys.executable, "-m", "orchestrator", "submit", str(matrix), "--broker",
                 broker.url, "--json"],
                {**env, "ORCH_STORE": str(store)},
            )  # fmt: skip
            published = len(json.loads(out)["published"])
            if published != n_jobs:
                raise SystemExit(f"orch published {published} of {n_jobs} jobs")
            runs["orch_s"].append(wall)
            runs["orch_rss_mb"].append(rss)
            messages = work / "messages.jsonl"
            if queued_messages(client, messages) != n_jobs:
                raise SystemExit("the queues do not hold what orch published")
            client.flushall()
            _wall, _rss, out = timed_child([sys.executable, "-c", _BARE, broker.url,
                                            str(messages)], env)  # fmt: skip
            runs["bare_s"].append(float(out))
            _wall, rss, _out = timed_child([sys.executable, "-c", _MATRIX_ONLY, str(matrix)], env)
            runs["matrix_rss_mb"].append(rss)
            # What the same child pays before any work: the part of `orch` the job count
            # does not change (module imports, mostly).
            startup, _rss, _out = timed_child(
                [sys.executable, "-c", _IMPORTS_ONLY], {**env, "ORCH_STORE": str(store)}
            )
            runs["startup_s"].append(startup)
            print(f"  n={n_jobs} rep {rep + 1}: orch {wall:.2f} s, bare {float(out):.2f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
        client.close()
    ratios = [o / b for o, b in zip(runs["orch_s"], runs["bare_s"], strict=True)]
    return {"jobs": n_jobs, "repeats": repeats, **runs, "orch_over_bare": ratios,
            "goal_s": GOAL_S.get(n_jobs)}  # fmt: skip


def spread(values: list[float], unit: str, digits: int = 2) -> str:
    return (
        f"{statistics.median(values):.{digits}f}{unit} "
        f"[{min(values):.{digits}f}-{max(values):.{digits}f}]"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="orch-bench-submit-") as tmp:
        for n_jobs in args.jobs:
            results.append(one_size(n_jobs, args.repeats, Path(tmp)))
    if args.json:
        print(json.dumps(results, indent=2))
    failed = False
    print(f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f} at the end; median [min-max]")
    for r in results:
        n, goal = r["jobs"], r["goal_s"]
        met = (
            ""
            if goal is None
            else (f"  goal < {goal:g} s: {'met' if max(r['orch_s']) < goal else 'NOT met'}")
        )
        failed |= goal is not None and max(r["orch_s"]) >= goal
        print(
            f"n={r['repeats']} x {n:,} jobs: orch submit {spread(r['orch_s'], ' s')} "
            f"({1e6 * statistics.median(r['orch_s']) / n:.0f} us/job; start-up alone "
            f"{spread(r['startup_s'], ' s')}), bare kombu loop "
            f"{spread(r['bare_s'], ' s')}, orch/bare {spread(r['orch_over_bare'], 'x')}; "
            f"peak RSS orch {spread(r['orch_rss_mb'], ' MB', 0)}, matrix alone "
            f"{spread(r['matrix_rss_mb'], ' MB', 0)}{met}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
