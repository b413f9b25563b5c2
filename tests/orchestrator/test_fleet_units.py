"""What deploy writes on a box: systemd units (checked by systemd-analyze), the supervisor loop,
the environment file; and how a service mode is chosen."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.fleet.boxfacts import shell_path
from orchestrator.fleet.bundle import _clean_copy
from orchestrator.fleet.service import supervisor_alive_command, supervisor_stop_command
from orchestrator.fleet.units import (
    Layout,
    Mode,
    choose_mode,
    env_file_text,
    expand_home,
    supervisor_script,
    systemd_unit,
    unit_arg,
    unit_path,
    unit_value,
)


def test_mode_follows_systemd_and_privilege() -> None:
    assert choose_mode(systemd_running=True, privileged=True) is Mode.SYSTEMD
    assert choose_mode(systemd_running=True, privileged=False) is Mode.SYSTEMD_USER
    assert choose_mode(systemd_running=False, privileged=True) is Mode.SUPERVISOR
    # service: in the inventory picks the mode, where the box can have it
    assert choose_mode(True, True, "supervisor") is Mode.SUPERVISOR
    assert choose_mode(True, True, "systemd-user") is Mode.SYSTEMD_USER
    with pytest.raises(ValueError, match="needs systemd"):
        choose_mode(False, True, "systemd-user")
    with pytest.raises(ValueError, match="needs root or passwordless sudo"):
        choose_mode(True, False, "systemd")
    assert unit_path(Mode.SYSTEMD, "/home/b") == "/etc/systemd/system/orch-agent.service"
    assert unit_path(Mode.SYSTEMD_USER, "/home/b") == (
        "/home/b/.config/systemd/user/orch-agent.service"
    )
    assert expand_home("~/orch", "/home/b") == "/home/b/orch"
    assert expand_home("/opt/orch", "/home/b") == "/opt/orch"


def test_system_unit_runs_as_the_user_and_user_unit_has_no_user() -> None:
    layout = Layout("/home/bench/orch")
    system = systemd_unit(layout, Mode.SYSTEMD, "bench")
    assert "User=bench\n" in system
    assert "EnvironmentFile=/home/bench/orch/agent.env\n" in system
    assert (
        'ExecStart="/home/bench/orch/venv/bin/orch" "worker" "--config" '
        '"/home/bench/orch/worker.yaml"\n' in system
    )
    assert "Restart=on-failure\n" in system and "WantedBy=multi-user.target\n" in system
    user = systemd_unit(layout, Mode.SYSTEMD_USER, "bench")
    assert "User=" not in user and "WantedBy=default.target\n" in user
    # The broker URL (with its password) lives only in the mode-600 environment file.
    assert "redis" not in system and "redis" not in user
    with pytest.raises(ValueError):
        systemd_unit(layout, Mode.SUPERVISOR, "bench")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_system_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    # verify checks that ExecStart's program exists and is executable: any real binary will do.
    shutil.copy("/bin/true", layout.orch)
    (tmp_path / "agent.env").write_text(env_file_text("redis://127.0.0.1:6379/0", {}))

    def problems(text: str, name: str) -> list[str]:
        unit = tmp_path / name
        unit.write_text(text)
        done = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
        )
        return [line for line in (done.stdout + done.stderr).splitlines() if name in line]

    good = systemd_unit(layout, Mode.SYSTEMD, "root")
    assert problems(good, "orch-agent.service") == []
    # ...and the check can fail: a bad setting in the same unit is reported.
    bad = good.replace("Restart=on-failure", "Restart=sometimes")
    assert problems(bad, "broken.service") != []


def test_unit_values_are_escaped_and_line_breaks_refused() -> None:
    assert unit_arg('/a b/%h/$X"\\') == '"/a b/%%h/$$X\\"\\\\"'
    assert unit_value("/opt/100%") == "/opt/100%%"
    for bad in ("/a\nUser=root", "/a b", '/a"b', ""):
        with pytest.raises(ValueError):
            unit_value(bad)
    with pytest.raises(ValueError):
        unit_arg("/a\nUser=root")
    with pytest.raises(ValueError, match="systemd unit"):
        systemd_unit(Layout("/home/b/x\nUser=root"), Mode.SYSTEMD, "bench")
    with pytest.raises(ValueError):
        systemd_unit(Layout("/home/b/x"), Mode.SYSTEMD, "bench\nUser=root")


def test_env_file_is_read_alike_by_sh(tmp_path: Path) -> None:
    url = "rediss://:p%40ss%3Aw0rd@broker.lan:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/x/ca.pem"
    env = tmp_path / "agent.env"
    env.write_text(env_file_text(url, {"HSA_OVERRIDE_GFX_VERSION": "11.0.0"}))
    out = subprocess.run(
        ["sh", "-c", f'set -a; . "{env}"; set +a; printf "%s\\n%s" "$ORCH_BROKER_URL" '
         '"$HSA_OVERRIDE_GFX_VERSION"'],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.splitlines() == [url, "11.0.0"]
    with pytest.raises(ValueError):
        env_file_text("redis://x", {"A": "it's"})


def test_supervisor_script_restarts_on_failure_and_stops_with_its_group(tmp_path: Path) -> None:
    """The real script, with a real program in the agent's place that fails, then runs."""
    layout = Layout(str(tmp_path))
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    runs = tmp_path / "runs"
    # Stands in for `orch worker`: exits 3 on its first run (restart expected), then stays up.
    Path(layout.orch).write_text(
        f'#!/bin/sh\necho run >> "{runs}"\n'
        f'[ "$(wc -l < "{runs}")" -eq 1 ] && exit 3\nexec sleep 300\n'
    )
    os.chmod(layout.orch, 0o755)
    Path(layout.env_file).write_text(env_file_text("redis://127.0.0.1:1/0", {}))
    script = supervisor_script(layout)
    assert "sleep 10" in script  # the restart delay this test shortens
    Path(layout.script).write_text(script.replace("sleep 10", "sleep 0.2"))
    with open(layout.log, "ab") as log:
        proc = subprocess.Popen(
            ["setsid", "sh", layout.script], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 10
        while not (runs.exists() and len(runs.read_text().splitlines()) == 2):
            assert time.monotonic() < deadline, Path(layout.log).read_text()
            time.sleep(0.05)
        assert "exited with 3" in Path(layout.log).read_text()
        pid = int(Path(layout.pidfile).read_text())
        assert pid == proc.pid  # the loop's pid is its process group's id
        # deploy's own checks, on a box without `ps` (slim images): /proc and kill only.
        env = {"PATH": str(_bin_without_ps(tmp_path))}
        alive = ["sh", "-c", supervisor_alive_command(layout)]
        assert subprocess.run(alive, env=env).returncode == 0
        other = Layout(str(tmp_path / "other"))  # same pid file contents, another script
        Path(other.root).mkdir()
        Path(other.pidfile).write_text(str(pid))
        assert subprocess.run(["sh", "-c", supervisor_alive_command(other)], env=env).returncode
        stop = subprocess.run(
            ["sh", "-c", supervisor_stop_command(layout)], env=env, capture_output=True, text=True
        )
        assert stop.returncode == 0 and "not found" not in stop.stderr, stop.stderr
        proc.wait(timeout=10)
        assert not Path(layout.pidfile).exists()
        assert subprocess.run(alive, env=env).returncode != 0
        deadline = time.monotonic() + 10
        while _group_alive(pid):  # the agent goes with the loop
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)


def _bin_without_ps(tmp_path: Path) -> Path:
    """A PATH folder with the few tools a slim image has, and no `ps`."""
    folder = tmp_path / "slim-bin"
    folder.mkdir()
    for tool in ("sh", "cat", "tr", "grep", "awk", "sleep", "seq", "rm", "kill"):
        found = shutil.which(tool)
        if found:
            (folder / tool).symlink_to(found)
    return folder


def _group_alive(pgid: int) -> bool:
    """Any process of the group that is not a zombie (init reaps orphans when it likes)."""
    out = subprocess.run(["ps", "-A", "-o", "pgid=,stat="], capture_output=True, text=True)
    rows = [line.split() for line in out.stdout.splitlines()]
    return any(int(r[0]) == pgid and not r[1].startswith("Z") for r in rows if len(r) == 2)


@pytest.mark.parametrize(
    "deploy_dir", ["~", "~/orch", "/opt/orch agent", '~/a"; touch pwned; "', "~/$(touch pwned)"]
)
def test_deploy_dir_is_one_shell_word_with_home_expanded(tmp_path: Path, deploy_dir: str) -> None:
    """Even a value the inventory would refuse stays one word, and runs nothing."""
    word = shell_path(deploy_dir)
    out = subprocess.run(
        ["sh", "-c", f'printf "%s" {word}'], capture_output=True, text=True, check=True,
        cwd=tmp_path, env={"HOME": "/home/b", "PATH": os.environ["PATH"]},
    ).stdout  # fmt: skip
    assert out == expand_home(deploy_dir, "/home/b")
    assert not (tmp_path / "pwned").exists()


def test_the_wheel_is_built_from_the_sources_not_from_build_leftovers(tmp_path: Path) -> None:
    # setuptools builds in build/lib and never removes from it: a module deleted from the
    # checkout would otherwise be deployed (seen: a stale module ended up in the wheel).
    root = tmp_path / "checkout"
    for name in ("jobs", "orchestrator", "worker"):
        (root / name / "__pycache__").mkdir(parents=True)
        (root / name / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text('[project]\nname = "orch"\n')
    (root / "pyproject.toml").write_text('[project]\\nname = "orch"\n')
    (root / "README.md").write_text("orch\n")
    (root / "build" / "lib" / "orchestrator").mkdir(parents=True)
    (root / "build" / "lib" / "orchestrator" / "deleted_since.py").write_text("")
    (root / ".venv").mkdir()
    copy = _clean_copy(root, tmp_path / "copy")
    files = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
    assert files == [
        "README.md", "jobs/__init__.py", "orchestrator/__init__.py", "pyproject.toml",
        "worker/__init__.py",
    ]  # fmt: skip
