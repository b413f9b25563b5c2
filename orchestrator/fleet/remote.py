"""One SSH session to one box (a Fabric `Connection`), with errors a user can act on.

Example::

    with Box.open(target, known_hosts) as box:      # HostError: unreachable, auth failed...
        box.run("uname -r").stdout
        box.write("/home/bench/orch/worker.yaml", text.encode(), mode=0o600)

Host keys are checked: a box whose key is not in `known_hosts` is refused (Fabric's default
would add it silently), and so is one whose key changed.
"""

from __future__ import annotations

import shlex
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut

from orchestrator.errors import HostError
from orchestrator.fleet.inventory import Target

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
# A box that stops answering fails its row instead of blocking the deploy: keepalives notice a
# dead connection, and every command and file transfer has a time limit.
KEEPALIVE_S = 15
COMMAND_TIMEOUT_S = 300.0
SFTP_TIMEOUT_S = 120.0


class Box:
    """A connected box: run commands (as the SSH user, or with `sudo -n`), read and write files."""

    def __init__(self, target: Target, conn: Connection) -> None:
        self.target = target
        self.conn = conn
        self._sftp: paramiko.SFTPClient | None = None

    @classmethod
    def open(cls, target: Target, known_hosts: Path | None) -> Box:
        conn = connection(target)
        hosts_file = (known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if hosts_file.is_file():
            conn.client.load_host_keys(str(hosts_file))
        try:
            conn.open()
        except Exception as exc:
            conn.close()
            raise connect_error(target, hosts_file, exc) from exc
        conn.transport.set_keepalive(KEEPALIVE_S)
        return cls(target, conn)

    def run(
        self,
        command: str,
        *,
        sudo: bool = False,
        check: bool = True,
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> Any:
        """Run `command` with `sh -c`; HostError with its stderr tail when it fails and `check`,
        and when it runs longer than `timeout_s`."""
        line = f"sudo -n sh -c {shlex.quote(command)}" if sudo else command
        try:
            result = self.conn.run(
                line, hide=True, warn=True, in_stream=False, pty=False, timeout=int(timeout_s)
            )
        except CommandTimedOut as exc:
            first = command.strip().splitlines()[0][:80]
            raise HostError(
                self.target.name,
                "timed out",
                f"`{first}` did not finish within {timeout_s:.0f} s (is the box overloaded?)",
            ) from exc
        if check and result.exited != 0:
            raise command_error(self.target.name, command, result.exited, result.stderr)
        return result

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        try:
            with self.sftp().open(path, "rb") as handle:
                data: bytes = handle.read()
                return data
        except FileNotFoundError:
            return None
        except OSError as exc:  # PermissionError, a folder...: that box's row says so
            raise HostError(self.target.name, "read failed", f"{path}: {exc}") from exc

    def sftp(self) -> paramiko.SFTPClient:
        """The session's SFTP client, with a time limit on every operation."""
        if self._sftp is None:
            self._sftp = self.conn.sftp()
            self._sftp.get_channel().settimeout(SFTP_TIMEOUT_S)
        return self._sftp

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write atomically (a temporary file renamed over `path`), with `mode` set before the
        first byte, so a secret is never readable by others, not even for a moment."""
        sftp = self.sftp()
        tmp = f"{path}.orch-tmp"
        try:
            with sftp.open(tmp, "wb") as handle:
                sftp.chmod(tmp, mode)
                handle.write(data)
            sftp.posix_rename(tmp, path)
        except OSError as exc:
            raise sftp_error(self.target.name, path, exc) from exc

    def put(self, local: Path, remote: str) -> None:
        try:
            self.sftp().put(str(local), remote)
        except OSError as exc:
            raise sftp_error(self.target.name, remote, exc) from exc

    def listdir(self, path: str) -> dict[str, int]:
        """File name -> size in a folder ({} when it does not exist)."""
        try:
            return {
                a.filename: a.st_size or 0
                for a in self.sftp().listdir_attr(path)
                if a.st_mode is not None and stat.S_ISREG(a.st_mode)
            }
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise HostError(self.target.name, "read failed", f"{path}: {exc}") from exc

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Box:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connection(target: Target) -> Connection:
    """A Fabric connection (not opened) to the box, with what the inventory says only."""
    connect_kwargs: dict[str, Any] = {"banner_timeout": 30, "auth_timeout": 30}
    if target.key is not None:
        # Only the key the inventory names: a stray agent key must not mask a wrong one.
        connect_kwargs.update(key_filename=str(target.key), look_for_keys=False, allow_agent=False)
    return Connection(
        target.address,
        user=target.user,
        port=target.port,
        connect_timeout=int(max(1, target.connect_timeout_s)),
        connect_kwargs=connect_kwargs,
        # Only what the inventory says: not the user's ~/.ssh/config (another user, key,
        # proxy or host name would silently apply).
        config=Config(overrides={"load_ssh_configs": False}),
    )


def connect_error(target: Target, known_hosts: Path, exc: Exception) -> HostError:
    """Turn what paramiko raised into the reason a person would give."""
    where = f"{target.user}@{target.address}:{target.port}"
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostError(
            target.name,
            "host key changed",
            f"{where} offers a different host key than {known_hosts} holds: if the box was "
            "reinstalled, remove its old line from known_hosts; otherwise do not connect",
        )
    if isinstance(exc, paramiko.AuthenticationException):
        key = f"key {target.key}" if target.key else "the SSH agent's and ~/.ssh keys"
        return HostError(
            target.name,
            "auth failed",
            f"{where} refused {key}: add its public key to ~{target.user}/.ssh/authorized_keys "
            f"on the box, or fix hosts.{target.name}.key / user ({target.where})",
        )
    if isinstance(exc, paramiko.SSHException) and "known_hosts" in str(exc):
        return HostError(
            target.name,
            "unknown host key",
            f"{where} is not in {known_hosts}: check its fingerprint, then add it "
            f"(ssh-keyscan -p {target.port} {target.address} >> {known_hosts}) "
            "or set known_hosts in the inventory",
        )
    if isinstance(exc, TimeoutError):
        return HostError(target.name, "unreachable", f"{where}: no answer within the timeout")
    if isinstance(exc, OSError):  # refused, no route, unknown name (NoValidConnectionsError)
        reason = exc.strerror or str(exc)
        return HostError(target.name, "unreachable", f"{where}: {reason}")
    return HostError(target.name, "ssh failed", f"{where}: {type(exc).__name__}: {exc}")


def unexpected_error(host: str, exc: Exception) -> HostError:
    """Whatever else went wrong on one box, as that box's row (never the whole command's end)."""
    if isinstance(exc, HostError):
        return exc
    if isinstance(exc, TimeoutError):
        return HostError(host, "timed out", f"the box stopped answering: {exc}")
    if isinstance(exc, paramiko.SSHException | EOFError):
        return HostError(host, "ssh failed", f"the SSH session broke: {type(exc).__name__}: {exc}")
    return HostError(host, "error", f"{type(exc).__name__}: {exc}")


def command_error(host: str, command: str, exited: int, stderr: str) -> HostError:
    tail = "\n".join(stderr.strip().splitlines()[-8:])
    if "No space left on device" in stderr or "Disk quota exceeded" in stderr:
        return HostError(host, "disk full", f"{tail}\n(free some space on the box, then deploy)")
    first = command.strip().splitlines()[0][:80]
    return HostError(host, "command failed", f"`{first}` exited {exited}:\n{tail}")


def sftp_error(host: str, path: str, exc: OSError) -> HostError:
    if exc.errno == 28 or "No space left" in str(exc):
        return HostError(host, "disk full", f"writing {path}: no space left on the box")
    return HostError(host, "upload failed", f"{path}: {exc}")


T = TypeVar("T")


def for_each_host(
    targets: list[Target],
    work: Callable[[Target], T],
    on_error: Callable[[HostError], T],
    max_parallel: int = 16,
) -> list[T]:
    """`work` for every target in parallel, in order; any error becomes `on_error`'s row for
    that host (one box must never end the others' command or lose the table)."""

    def guarded(target: Target) -> T:
        try:
            return work(target)
        except Exception as exc:
            return on_error(unexpected_error(target.name, exc))

    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(targets)))) as pool:
        return list(pool.map(guarded, targets))
