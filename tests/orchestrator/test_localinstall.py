"""`orch local install`: the systemd user unit and the launchd agent, and what is run to
enable them (recorded here: this machine has no user service manager to talk to)."""

from __future__ import annotations

import plistlib
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator import localinstall, servicefiles
from orchestrator.errors import OrchError


class Recorder:
    def __init__(self, answers: dict[str, tuple[int, str]] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        for word, (code, out) in self.answers.items():
            if word in argv:
                return subprocess.CompletedProcess(argv, code, out, "no user bus" if code else "")
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_systemd_user_unit_runs_the_supervisor_and_is_enabled(tmp_path: Path) -> None:
    run = Recorder({"show-user": (0, "Linger=no\n")})
    service_dir = tmp_path / "svc dir%"  # a space and a specifier, escaped for systemd
    done = localinstall.install(service_dir, platform="linux", home=tmp_path, run=run)
    unit = done.path.read_text()
    assert done.path == tmp_path / ".config/systemd/user/orch-local.service"
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start == (
        f'ExecStart="{sys.executable}" "-m" "orchestrator" "local" "run" "--dir" '
        f'"{tmp_path}/svc dir%%"'
    )
    assert "Restart=on-failure" in unit and "WantedBy=default.target" in unit
    # a supervisor already running by hand holds the lock: that exit is not a failure to retry
    assert "RestartPreventExitStatus=75" in unit and "KillMode=mixed" in unit
    assert ["systemctl", "--user", "enable", "--now", "orch-local.service"] in run.calls
    assert any("sudo loginctl enable-linger" in line for line in done.lines)


def test_without_a_user_manager_install_says_what_to_do(tmp_path: Path) -> None:
    run = Recorder({"daemon-reload": (1, "")})
    with pytest.raises(OrchError, match="is a systemd user manager running") as info:
        localinstall.install(tmp_path / "svc", platform="linux", home=tmp_path, run=run)
    assert "orch local start" in str(info.value)
    assert (tmp_path / ".config/systemd/user/orch-local.service").is_file()


def test_launchd_agent_on_macos(tmp_path: Path) -> None:
    run = Recorder()
    done = localinstall.install(tmp_path / "svc", platform="darwin", home=tmp_path, run=run)
    plist = plistlib.loads(done.path.read_bytes())
    assert done.path == tmp_path / "Library/LaunchAgents/org.orch.local.plist"
    assert plist["ProgramArguments"][-4:] == ["local", "run", "--dir", str(tmp_path / "svc")]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ProcessType"] == "Interactive"  # not throttled like a background job
    assert run.calls[-1][:2] == ["launchctl", "bootstrap"]
    removed = localinstall.uninstall(platform="darwin", home=tmp_path, run=run)
    assert not done.path.exists() and "removed" in removed[0]


def test_other_platforms_are_told_to_start_it_by_hand(tmp_path: Path) -> None:
    with pytest.raises(OrchError, match="orch local start"):
        localinstall.install(tmp_path, platform="freebsd14", home=tmp_path, run=Recorder())


def test_scheduled_task_on_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified against Task Scheduler's documented XML and schtasks syntax only: no Windows
    here (see test_servicefiles)."""
    monkeypatch.setenv("USERDOMAIN", "LAPTOP")
    monkeypatch.setenv("USERNAME", "ann")
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "orch home"))
    run = Recorder()
    done = localinstall.install(tmp_path / "svc", platform="win32", home=tmp_path, run=run)
    assert done.path == tmp_path / "AppData/Local/orch/orch-local.task.xml"
    task = ET.fromstring(done.path.read_bytes().decode("utf-16"))
    ns = {"t": servicefiles.TASK_NS}
    assert task.findtext("t:Triggers/t:LogonTrigger/t:UserId", namespaces=ns) == "LAPTOP\\ann"
    assert task.findtext("t:Actions/t:Exec/t:Command", namespaces=ns) == sys.executable
    assert run.calls == [
        ["schtasks", "/Create", "/XML", str(done.path), "/TN", "orch-local", "/F"],
        ["schtasks", "/Run", "/TN", "orch-local"],
    ]  # no /RU or /RP: no password is asked for or stored
    assert any("ORCH_HOME" in line and "setx" in line for line in done.lines)
    removed = localinstall.uninstall(platform="win32", home=tmp_path, run=run)
    assert run.calls[-1] == ["schtasks", "/Delete", "/TN", "orch-local", "/F"]
    assert not done.path.exists() and "removed" in removed[0]


def test_a_refused_scheduled_task_leaves_nothing(tmp_path: Path) -> None:
    run = Recorder({"/Create": (1, "ERROR: Access is denied.")})
    with pytest.raises(OrchError, match="Run as administrator"):
        localinstall.install(tmp_path / "svc", platform="win32", home=tmp_path, run=run)
    assert not localinstall.task_path(tmp_path).exists()
    assert "nothing installed" in localinstall.uninstall(platform="win32", home=tmp_path,
                                                         run=run)[0]  # fmt: skip
    assert len(run.calls) == 1  # nothing to delete


def test_a_path_launchd_cannot_hold_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(OrchError, match="nothing installed"):
        localinstall.install(tmp_path / "a\x01b", platform="darwin", home=tmp_path, run=Recorder())
    assert not (tmp_path / "Library").exists()


def test_uninstall_without_install(tmp_path: Path) -> None:
    assert "nothing installed" in localinstall.uninstall(platform="linux", home=tmp_path,
                                                         run=Recorder())[0]  # fmt: skip
