"""Single-box mode: an embedded broker plus one local worker, on the same path as a fleet.

`orch demo` and `orch submit --local` use this. The worker is a real `orch worker` child
process talking to a real (embedded) Valkey over loopback; only the infrastructure is local.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jobs.paths import orch_home
from orchestrator.errors import OrchError

_WORKER_START_S = 60.0


def orch_command(*args: str) -> list[str]:
    """argv for another `orch` command in a child process (same Python, same install)."""
    return [sys.executable, "-m", "orchestrator", *args]


@dataclass(frozen=True)
class LocalFleet:
    broker_url: str
    host: str
    worker_log: Path


@contextmanager
def local_fleet(worker_config: Path, data_dir: Path) -> Iterator[LocalFleet]:
    """Start an embedded broker and one `orch worker` with `worker_config`; stop both after."""
    # Imported here, not above: the one-box service and the CLI import this module for
    # `orch_command`, and must not pay for redis-py, Celery and kombu to start.
    from orchestrator.embedded import EmbeddedBroker

    with EmbeddedBroker(data_dir / "broker") as broker:
        log_path = data_dir / "worker.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                orch_command("worker", "--config", str(worker_config), "--broker", broker.url),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            host = _wait_for_worker(broker.url, proc, log_path)
            yield LocalFleet(broker.url, host, log_path)
        finally:
            _stop(proc)


def _wait_for_worker(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> str:
    from orchestrator.broker import connect, read_inventories

    client = connect(url)
    deadline = time.monotonic() + _WORKER_START_S
    while time.monotonic() < deadline:
        for inv in read_inventories(client).values():
            if inv.pid == proc.pid:
                return inv.host
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise OrchError(f"the local worker did not start (log {log_path}):\n{tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_json(*args: str) -> dict[str, str]:
    """Run an `orch` child command whose stdout is JSON; its stderr (progress) reaches the user."""
    done = subprocess.run(orch_command(*args), stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise OrchError(f"`orch {' '.join(args)}` failed (exit code {done.returncode})")
    data: dict[str, str] = json.loads(done.stdout)
    return data


def this_host() -> str:
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    return name.strip("-_") or "this-box"


def prepare_demo(data_dir: Path) -> tuple[Path, Path]:
    """Build llama.cpp (cached), write the tiny models, and write a worker config and a matrix.

    Returns (worker.yaml, matrix.yaml). The campaign name carries the time, so each demo
    measures afresh instead of finding its earlier jobs already done.
    """
    import yaml

    data_dir.mkdir(parents=True, exist_ok=True)
    binaries = _run_json("engines", "install", "llama.cpp", "--json")
    models = _run_json("models", "tiny", "--out", str(orch_home() / "models"), "--json")
    host = this_host()
    worker_yaml = data_dir / "worker.yaml"
    worker_yaml.write_text(
        yaml.safe_dump(
            {
                "host": host,
                "declared": {"form_factor": "this box"},
                "engines": {
                    name: {"backends": {"cpu": binaries[name]}}
                    for name in ("llama-bench", "llama-server")
                },
                "models": models,
                "threads": max(1, (os.cpu_count() or 2)),
            },
            sort_keys=False,
        )
    )
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    matrix_yaml = data_dir / "matrix.yaml"
    matrix_yaml.write_text(
        yaml.safe_dump(
            {
                "campaign": f"demo-{stamp}",
                # 8: enough for a 95% CI of the median (shown from 6) and a verdict
                "repetitions": 8,
                "engine": "llama-bench",
                "workload": {"prompt_tokens": 128, "gen_tokens": 32},
                "hosts": [host],
                "matrix": {
                    "engine": ["llama-bench", "llama-server"],
                    "model": sorted(models),
                    "backend": ["cpu"],
                    "context": [512, 4096],
                },
            },
            sort_keys=False,
        )
    )
    return worker_yaml, matrix_yaml
