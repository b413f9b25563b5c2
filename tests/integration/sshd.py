"""A real OpenSSH server on a free loopback port, for the fleet tests.

It runs with a host key and a client key generated here, its own authorized_keys file, and a
known_hosts file that holds its host key, so `orch fleet` checks the host key as it does for
a user. Logins are for the user running the tests (root in CI: key-only).
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
    port: int
    client_key: Path  # in authorized_keys
    other_key: Path  # a valid key the server does not know
    known_hosts: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orch-test", "-f", str(path)],
        check=True,
    )
    return path


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    if not Path(SSHD).is_file() or shutil.which("ssh-keygen") is None:
        pytest.skip(
            f"no OpenSSH server ({SSHD}) or ssh-keygen: scripts/test installs the Debian "
            "openssh-server package when it runs as root with apt-get"
        )
    folder = tmp_path / "sshd"
    folder.mkdir()
    host_key = _keygen(folder / "host_key")
    client_key = _keygen(folder / "client_key")
    other_key = _keygen(folder / "other_key")
    authorized = folder / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    port = free_port()
    known_hosts = folder / "known_hosts"
    key_type, key_b64 = host_key.with_suffix(".pub").read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    try:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder (as root)
    except OSError:
        pass  # not root: sshd runs unprivileged and needs none
    options = {
        "Port": str(port),
        "ListenAddress": "127.0.0.1",
        "HostKey": str(host_key),
        "AuthorizedKeysFile": str(authorized),
        "StrictModes": "no",
        "PidFile": str(folder / "sshd.pid"),
        "PermitRootLogin": "prohibit-password",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "UsePAM": "no",
        "Subsystem": "sftp internal-sftp",
    }
    argv = [SSHD, "-D", "-e", "-f", "/dev/null"]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    log = folder / "sshd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"sshd did not start:\n{log.read_text()}")
            time.sleep(0.05)
    yield SshServer(port, client_key, other_key, known_hosts, log)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
