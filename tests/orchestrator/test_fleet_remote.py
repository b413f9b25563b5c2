"""How failures on a box are named: what a person would say, with what to do."""

from __future__ import annotations

import errno
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paramiko
import pytest
from invoke.exceptions import CommandTimedOut

from orchestrator.errors import HostError
from orchestrator.fleet.bundle import dependency_wheels
from orchestrator.fleet.deploy import HostOutcome, failed_outcome
from orchestrator.fleet.inventory import Target
from orchestrator.fleet.remote import (
    Box,
    command_error,
    connect_error,
    connection,
    for_each_host,
    sftp_error,
)

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


def test_the_users_ssh_config_is_not_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text(
        "Host 192.0.2.7\n  HostName evil.example\n  User root\n  Port 1\n"
        "  ProxyCommand nc evil.example 22\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    conn = connection(TARGET)
    assert (conn.host, conn.user, conn.port) == ("192.0.2.7", "bench", 2222)
    assert conn.gateway is None
    assert conn.connect_kwargs["key_filename"] == ["/k/id_ed25519"]
    assert conn.connect_kwargs["look_for_keys"] is False
    assert conn.connect_kwargs["allow_agent"] is False


class _FakeSftp:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def get_channel(self) -> Any:
        return SimpleNamespace(settimeout=lambda s: None)

    def open(self, path: str, mode: str) -> Any:
        raise self.exc

    def listdir_attr(self, path: str) -> Any:
        raise self.exc


class _FakeConn:
    """Stands in for Fabric's Connection on the error paths of our own code."""

    def __init__(self, sftp_exc: Exception | None = None) -> None:
        self.sftp_exc = sftp_exc
        self.timeouts: list[int] = []

    def sftp(self) -> _FakeSftp:
        return _FakeSftp(self.sftp_exc or OSError("unused"))

    def run(self, line: str, **kwargs: Any) -> Any:
        self.timeouts.append(kwargs["timeout"])
        raise CommandTimedOut(SimpleNamespace(), kwargs["timeout"])

    def close(self) -> None:
        pass


def test_unreadable_files_and_hung_commands_are_that_boxs_error() -> None:
    box = Box(TARGET, _FakeConn(PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(HostError) as info:
        box.read("/home/bench/orch/state.json")
    assert info.value.reason == "read failed" and "state.json" in info.value.detail
    with pytest.raises(HostError, match="read failed"):
        box.listdir("/home/bench/orch/wheels")
    assert Box(TARGET, _FakeConn(FileNotFoundError())).read("/x") is None
    hung = _FakeConn()
    with pytest.raises(HostError) as info:
        Box(TARGET, hung).run("pip install x", timeout_s=7)
    assert info.value.reason == "timed out" and "within 7 s" in info.value.detail
    assert hung.timeouts == [7]


def test_any_error_on_one_box_is_its_row_and_the_others_go_on() -> None:
    errors: dict[str, Exception] = {
        "ssh": paramiko.SSHException("Channel closed."),
        "perm": PermissionError(errno.EACCES, "Permission denied"),
        "value": ValueError("bad unit value"),
        "hung": TimeoutError("timed out"),
        "host": HostError("host", "disk full", "no space"),
    }

    def work(target: Target) -> HostOutcome:
        if target.name in errors:
            raise errors[target.name]
        return HostOutcome(target.name, ok=True, changes=["started"])

    targets = [replace(TARGET, name=n) for n in [*errors, "good"]]
    rows = {o.host: o for o in for_each_host(targets, work, failed_outcome)}
    assert [r.ok for r in rows.values()] == [False] * 5 + [True]
    assert rows["good"].result == "changed"
    assert rows["ssh"].result == "FAILED: ssh failed" and "Channel closed" in rows["ssh"].detail
    assert rows["perm"].result == "FAILED: error" and "PermissionError" in rows["perm"].detail
    assert rows["value"].detail == "ValueError: bad unit value"
    assert rows["hung"].result == "FAILED: timed out"
    assert rows["host"].result == "FAILED: disk full"


def test_wheelhouse_leaves_out_orchs_own_wheel_only(tmp_path: Path) -> None:
    names = ["orch-0.1.0-py3-none-any.whl", "torch-2.5.0-cp311-none-any.whl", "redis-5.0.whl"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in dependency_wheels(tmp_path)] == [
        "redis-5.0.whl",
        "torch-2.5.0-cp311-none-any.whl",
    ]
