"""A local inference server run as a child: started, health-checked, logged, stopped.

Like `process.run_bounded`, the child gets its own process group and (on Linux) dies with the
worker, so a crashed agent never leaves a server holding the GPU.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time

from worker.engines.http_stream import get_status
from worker.engines.process import die_with_parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`argv` must make the server listen on 127.0.0.1 at the port it names after `--port`."""

    def __init__(self, argv: list[str], health_path: str = "/health") -> None:
        self.argv = argv
        self.port = int(argv[argv.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.health_path = health_path
        self.load_time_s: float | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="orch-server-", suffix=".log", delete=False)
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = 0.0

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> None:
        self._started = time.monotonic()
        # The log goes to a file, not a pipe: nobody reads it while the server runs, and a
        # full pipe would stall the server mid-benchmark.
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # noqa: PLW1509
        )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_ready(self, timeout_s: float) -> bool:
        """Poll the health endpoint; True once it answers 200 (load time recorded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive():
            try:
                if get_status(self.url, self.health_path, timeout_s=2) == 200:
                    self.load_time_s = time.monotonic() - self._started
                    return True
            except OSError:
                pass  # not listening yet
            time.sleep(0.05)
        return False

    def log_text(self) -> str:
        with open(self._log.name, errors="replace") as log:
            return log.read()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().strip().splitlines()[-lines:])

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass
