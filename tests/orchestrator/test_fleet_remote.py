"""How failures on a box are named: what a person would say, with what to do."""

from __future__ import annotations

import errno
from pathlib import Path

import paramiko

from orchestrator.fleet.inventory import Target
from orchestrator.fleet.remote import command_error, connect_error, sftp_error

TARGET = Target(
    name="laptop", address="192.0.2.7", port=2222, user="bench", key=Path("/k/id_ed25519"),
    python="python3", sudo=False, deploy_dir="~/orch", env={}, connect_timeout_s=5,
    worker={}, where="fleet.yaml:12",
)  # fmt: skip
KNOWN = Path("/home/me/.ssh/known_hosts")


def test_connect_errors_name_the_reason_and_the_fix() -> None:
    auth = connect_error(TARGET, KNOWN, paramiko.AuthenticationException("denied"))
    assert auth.reason == "auth failed"
    assert "bench@192.0.2.7:2222 refused key /k/id_ed25519" in auth.detail
    assert "fleet.yaml:12" in auth.detail
    refused = connect_error(TARGET, KNOWN, ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert (refused.reason, refused.detail) == ("unreachable", "bench@192.0.2.7:2222: refused")
    timeout = connect_error(TARGET, KNOWN, TimeoutError("timed out"))
    assert timeout.reason == "unreachable" and "no answer" in timeout.detail
    unknown = connect_error(
        TARGET, KNOWN, paramiko.SSHException("Server '[192.0.2.7]:2222' not found in known_hosts")
    )
    assert unknown.reason == "unknown host key"
    assert f"ssh-keyscan -p 2222 192.0.2.7 >> {KNOWN}" in unknown.detail


def test_a_full_disk_is_named_as_such() -> None:
    full = command_error(
        "laptop", "pip install x", 1, "OSError: [Errno 28] No space left on device"
    )
    assert full.reason == "disk full" and "free some space" in full.detail
    other = command_error("laptop", "pip install x\nmore", 2, "one\ntwo\n")
    assert (
        other.reason == "command failed" and other.detail == "`pip install x` exited 2:\none\ntwo"
    )
    assert sftp_error("laptop", "/x", OSError(errno.ENOSPC, "No space left")).reason == "disk full"
    assert sftp_error("laptop", "/x", OSError(errno.EACCES, "Permission denied")).reason == (
        "upload failed"
    )
