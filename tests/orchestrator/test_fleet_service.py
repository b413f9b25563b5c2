"""Service steps whose failure the box reports in its command output (a fake Box: these are
the error paths of our own code; the happy paths run against a real sshd in integration)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestrator.errors import HostError
from orchestrator.fleet import service
from orchestrator.fleet.inventory import Target

TARGET = Target(
    name="laptop", address="192.0.2.7", port=22, user="bench", key=Path("/k/id_ed25519"),
    python="python3", sudo=False, deploy_dir="~/orch", env={}, connect_timeout_s=5,
    worker={}, where="fleet.yaml:12",
)  # fmt: skip


class _ScriptedBox:
    """Answers `loginctl show-user` with the Linger values given, in turn."""

    def __init__(self, linger: list[str], enable_stderr: str = "") -> None:
        self.target = TARGET
        self.linger = linger
        self.enable_stderr = enable_stderr
        self.commands: list[str] = []

    def run(self, command: str, **kwargs: Any) -> Any:
        self.commands.append(command)
        if "show-user" in command:
            return SimpleNamespace(stdout=f"Linger={self.linger.pop(0)}\n", stderr="", exited=0)
        return SimpleNamespace(stdout="", stderr=self.enable_stderr, exited=1)


def test_linger_already_on_changes_nothing() -> None:
    box = _ScriptedBox(["yes"])
    service.ensure_linger(box)  # type: ignore[arg-type]
    assert not any("enable-linger" in c for c in box.commands)


def test_linger_turned_on() -> None:
    box = _ScriptedBox(["no", "yes"])
    service.ensure_linger(box)  # type: ignore[arg-type]
    assert any("enable-linger" in c for c in box.commands)


def test_linger_that_stays_off_fails_the_row() -> None:
    box = _ScriptedBox(["no", "no"], enable_stderr="Could not enable linger: Access denied\n")
    with pytest.raises(HostError) as info:
        service.ensure_linger(box)  # type: ignore[arg-type]
    assert info.value.reason == "no linger"
    assert "Access denied" in info.value.detail and "fleet.yaml:12" in info.value.detail
