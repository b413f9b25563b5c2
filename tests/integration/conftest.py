"""Real worker processes (`orch worker`) against a real broker, for the integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from orchestrator.broker import read_inventories

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder starts real servers: marked `integration` (a `pytestmark` in
    a conftest would mark nothing), so `-m "not integration"` leaves them out."""
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@dataclass
class WorkerProc:
    host: str
    config: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a power cut or OOM kill would: no cleanup runs."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def orch(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Any:
    """Run the real `orch` CLI in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def write_worker_config(
    path: Path,
    host: str,
    llama_bin: Path,
    models: dict[str, Path],
    disturbance: dict[str, Any] | None = None,
    **declared: Any,
) -> Path:
    """A worker.yaml for the real llama.cpp build and the tiny models.

    Disturbance detection is off unless `disturbance` is given: the CI box is shared, and a
    test that asserts report cells or verdicts from real runs must not depend on what other
    processes happened to do (tests/integration/test_disturbed_runs.py loads the box on purpose).
    """
    path.write_text(
        yaml.safe_dump(
            {
                "host": host,
                "declared": declared,
                "engines": {
                    name: {"backends": {"cpu": str(llama_bin / name)}}
                    for name in ("llama-bench", "llama-server")
                },
                "models": {name: str(p) for name, p in models.items()},
                "threads": 1,
                "disturbance": disturbance if disturbance is not None else {"enabled": False},
                # This VM has no APU, so a declared carve-out contradicts its facts: the tests
                # that declare one stand in for a carve-out box (a test that points facts_root
                # at a fixture box turns the check back on).
                **({"check_declared": False} if "vram_split" in declared else {}),
            }
        )
    )
    return path


@pytest.fixture
def start_worker(broker: str, tmp_path: Path) -> Iterator[Any]:
    """start_worker(config_path) -> WorkerProc, once its inventory is published."""
    started: list[WorkerProc] = []
    client = redis.Redis.from_url(broker)

    def start(config: Path, *, wait: bool = True, timeout_s: float = 60) -> WorkerProc:
        host = yaml.safe_load(config.read_text())["host"]
        log = tmp_path / f"worker-{host}-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "worker", "--config", str(config),
                 "--broker", broker],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # The agent's outbox (ORCH_HOME/spool/<host>) is the test's own: a result kept
                # by another test's agent of the same host would be published into this broker.
                env={**os.environ, "ORCH_HOME": str(tmp_path / "orch-home")},
            )  # fmt: skip
        worker = WorkerProc(host, config, log, proc)
        started.append(worker)
        deadline = time.monotonic() + timeout_s
        while wait:
            inv = read_inventories(client).get(host)
            if inv is not None and inv.pid == proc.pid:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"worker {host} did not start:\n{worker.log_text()[-3000:]}")
            time.sleep(0.1)
        return worker

    yield start
    for worker in started:
        worker.stop()
    client.close()
