"""A local inference server run as a child: started, health-checked, logged, stopped.

Like `process.run_bounded`, the child gets a group of its own (a POSIX session; a new process
group on Windows) and dies with the worker (Linux: a parent-death signal; Windows: the job
object `ProcessTree` puts it in), so a crashed agent never leaves a server holding the GPU;
`stop` ends every process the server started too (tracked with psutil), and its log is read
back as a bounded tail.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time

from worker.engines.http_stream import get_status
from worker.engines.process import TRACK_INTERVAL_S, ProcessTree, die_with_parent
from worker.platform import proc as platform_proc

LOG_TAIL_BYTES = 1024 * 1024  # what is read back of the server's log (it may run for hours)


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
        self._tree: ProcessTree | None = None
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
            preexec_fn=die_with_parent(),  # noqa: PLW1509
            **platform_proc.group_popen_kwargs(),
        )
        self._tree = ProcessTree(self._proc.pid)

    def alive(self) -> bool:
        if self._tree is not None:
            self._tree.track(TRACK_INTERVAL_S)  # helpers it started die with it in `stop`
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
        """The log's last LOG_TAIL_BYTES."""
        with open(self._log.name, "rb") as log:
            size = log.seek(0, 2)
            log.seek(max(size - LOG_TAIL_BYTES, 0))
            # at most the tail: the server may write on while this reads
            return log.read(LOG_TAIL_BYTES).decode(errors="replace")

    def log_head(self, chars: int) -> str:
        """The first `chars` characters of the log (the load messages), read bounded."""
        with open(self._log.name, errors="replace") as log:
            return log.read(chars)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().strip().splitlines()[-lines:])

    def stop(self) -> None:
        proc, tree = self._proc, self._tree
        if proc is not None and tree is not None:
            if proc.poll() is None:
                tree.end(hard=False)  # a clean exit frees GPU memory sooner
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            tree.kill()  # whatever is left of it, helpers included
            proc.wait()
        self._log.close()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass
