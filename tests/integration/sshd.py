"""Real OpenSSH servers on this machine, for the fleet tests.

Each runs with a host key and a client key generated here, its own authorized_keys file, and
a known_hosts file that holds its host key, so `orch fleet` checks the host key as it does for
a user. Logins are for the user running the tests (root in CI: key-only). `start_sshd` can
also run one inside a network namespace (a second "host", see `netns.py`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.embedded import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class SshServer:
    address: str
    port: int
    client_key: Path  # in authorized_keys
    other_key: Path  # a valid key the server does not know
    known_hosts: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def keygen(path: Path) -> Path:
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orch-test", "-f", str(path)],
            check=True,
        )
    return path


def start_sshd(
    folder: Path, known_hosts: Path, address: str = "127.0.0.1", netns: str | None = None
) -> SshServer:
    """An sshd on `address` (inside `netns` if given) that knows the folder's client key;
    its host key is appended to `known_hosts`."""
    if not Path(SSHD).is_file() or shutil.which("ssh-keygen") is None:
        pytest.skip(
            f"no OpenSSH server ({SSHD}) or ssh-keygen: scripts/test installs the Debian "
            "openssh-server package when it runs as root with apt-get"
        )
    folder.mkdir(parents=True, exist_ok=True)
    host_key = keygen(folder / f"host_key_{address.replace('.', '_')}")
    client_key = keygen(folder / "client_key")
    other_key = keygen(folder / "other_key")
    authorized = folder / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    port = free_port()
    key_type, key_b64 = host_key.with_suffix(".pub").read_text().split()[:2]
    with known_hosts.open("a") as out:
        out.write(f"[{address}]:{port} {key_type} {key_b64}\n")
    try:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder (as root)
    except OSError:
        pass  # not root: sshd runs unprivileged and needs none
    options = {
        "Port": str(port),
        "ListenAddress": address,
        "HostKey": str(host_key),
        "AuthorizedKeysFile": str(authorized),
        "StrictModes": "no",
        "PidFile": str(folder / f"sshd-{address}.pid"),
        "PermitRootLogin": "prohibit-password",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "UsePAM": "no",
        "Subsystem": "sftp internal-sftp",
    }
    argv = [SSHD, "-D", "-e", "-f", "/dev/null"]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    log = folder / f"sshd-{address}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    server = SshServer(address, port, client_key, other_key, known_hosts, log, proc)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return server
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                pytest.fail(f"sshd did not start:\n{server.log_text()}")
            time.sleep(0.05)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    (tmp_path / "sshd").mkdir()
    server = start_sshd(tmp_path / "sshd", tmp_path / "sshd" / "known_hosts")
    yield server
    server.stop()
