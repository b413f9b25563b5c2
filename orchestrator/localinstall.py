"""`orch local install|uninstall`: make the one-box service come back after a reboot by itself.

- Linux: a systemd user unit `~/.config/systemd/user/orch-local.service` running the
  supervisor (`orch local run`), enabled with `systemctl --user enable --now`. A user unit
  starts at boot only when the user has lingering on (`loginctl enable-linger USER`): install
  checks it and says so.
- macOS: a launchd agent `~/Library/LaunchAgents/org.orch.local.plist` (RunAtLoad, KeepAlive
  when it exits with an error, ProcessType Interactive so it is not throttled), loaded with
  `launchctl bootstrap gui/UID` (an older copy is booted out first).
- Windows: a Scheduled Task `orch-local` started when the user logs on, in their session
  (no password is stored), registered with `schtasks /Create /XML FILE /TN orch-local /F` and
  started at once with `schtasks /Run`; the XML is kept in the home's `AppData/Local/orch/`.
  A task gets the user's stored environment, not this shell's: install names the variables it
  cannot carry.

The launchd and Task Scheduler files are made and checked in orchestrator.servicefiles.

The service's folder and the worker config are fixed in the file, so it runs the same service
`orch local start` would. What the files say is a pure function of the inputs (tested as text);
the system calls are made through `run`, so a test can see them without a service manager.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator import servicefiles
from orchestrator.errors import OrchError
from orchestrator.fleet.units import unit_arg
from orchestrator.local import orch_command
from orchestrator.localservice import ALREADY_RUNNING_EXIT

UNIT_NAME = "orch-local.service"
LAUNCHD_LABEL = "org.orch.local"
TASK_NAME = "orch-local"

Run = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def run_command(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(argv, 127, "", str(exc))


def supervisor_argv(service_dir: Path) -> list[str]:
    return orch_command("local", "run", "--dir", str(service_dir))


def systemd_unit_text(service_dir: Path, env: dict[str, str]) -> str:
    lines = [
        "# written by `orch local install`; `orch local uninstall` removes it",
        "[Unit]",
        "Description=orch one-box service (broker + benchmark agent)",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        *(f"Environment={unit_arg(f'{k}={v}')}" for k, v in sorted(env.items())),
        f"ExecStart={' '.join(unit_arg(a) for a in supervisor_argv(service_dir))}",
        "Restart=on-failure",
        "RestartSec=10",
        # A supervisor started by hand holds the lock: the unit's one exits 75, not a failure.
        f"RestartPreventExitStatus={ALREADY_RUNNING_EXIT}",
        "KillSignal=SIGTERM",
        # SIGTERM to the supervisor only: it stops the agent, then the broker, in that order.
        "KillMode=mixed",
        # The supervisor stops the agent (up to 60 s), then the broker.
        "TimeoutStopSec=90",
        "UMask=0077",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def launchd_plist(service_dir: Path, env: dict[str, str]) -> bytes:
    try:
        log = str(service_dir / "service.log")
        argv = supervisor_argv(service_dir)
        return servicefiles.launchd_plist(LAUNCHD_LABEL, argv, env, str(service_dir), log)
    except ValueError as exc:
        raise OrchError(f"nothing installed: {exc}") from exc


def task_xml(service_dir: Path, user: str) -> bytes:
    try:
        argv = supervisor_argv(service_dir)
        about = "orch one-box service (broker + benchmark agent)"
        return servicefiles.task_xml(TASK_NAME, argv, str(service_dir), user, about)
    except ValueError as exc:
        raise OrchError(f"nothing installed: {exc}") from exc


def windows_user() -> str:
    """DOMAIN\\user as Task Scheduler names the user running this (USERDOMAIN, USERNAME)."""
    user = os.environ.get("USERNAME") or getpass.getuser()
    domain = os.environ.get("USERDOMAIN")
    return f"{domain}\\{user}" if domain else user


def service_env() -> dict[str, str]:
    """What the unit needs of this shell's environment: where orch keeps things."""
    keep = ("ORCH_HOME", "ORCH_STORE", "ORCH_LOCAL_DIR", "XDG_DATA_HOME", "PATH")
    return {k: os.environ[k] for k in keep if os.environ.get(k)}


@dataclass(frozen=True)
class InstallOutcome:
    path: Path
    lines: list[str]  # what was done and what the user should do, in words


def install(
    service_dir: Path,
    *,
    platform: str = sys.platform,
    home: Path | None = None,
    run: Run = run_command,
) -> InstallOutcome:
    home = home or Path.home()
    env = service_env()
    if platform.startswith("linux"):
        return _install_systemd(service_dir, home, env, run)
    if platform == "darwin":
        return _install_launchd(service_dir, home, env, run)
    if platform == "win32":
        return _install_task(service_dir, home, env, run)
    raise OrchError(
        f"`orch local install` knows systemd (Linux), launchd (macOS) and Task Scheduler "
        f"(Windows), not {platform}: start the service with `orch local start` after each boot"
    )


def _install_systemd(
    service_dir: Path, home: Path, env: dict[str, str], run: Run
) -> InstallOutcome:
    path = home / ".config" / "systemd" / "user" / UNIT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(systemd_unit_text(service_dir, env))
    lines = [f"wrote {path}"]
    for argv in (["systemctl", "--user", "daemon-reload"],
                 ["systemctl", "--user", "enable", "--now", UNIT_NAME]):  # fmt: skip
        done = run(argv)
        if done.returncode != 0:
            raise OrchError(
                f"wrote {path}, but `{' '.join(argv)}` failed: "
                f"{(done.stderr or done.stdout).strip() or 'exit ' + str(done.returncode)}\n"
                "is a systemd user manager running for this user? Then run "
                f"`systemctl --user enable --now {UNIT_NAME}`; without systemd, run "
                "`orch local start` after each boot"
            )
    lines.append(f"enabled and started {UNIT_NAME} (systemctl --user)")
    user = getpass.getuser()
    linger = run(["loginctl", "show-user", user, "--property=Linger"])
    if "Linger=yes" not in linger.stdout:
        lines.append(
            f"lingering is off for {user}: the service starts only once you log in. To have it "
            f"start at boot, run `sudo loginctl enable-linger {user}`"
        )
    else:
        lines.append(f"lingering is on for {user}: the service starts at boot")
    return InstallOutcome(path, lines)


def _install_launchd(
    service_dir: Path, home: Path, env: dict[str, str], run: Run
) -> InstallOutcome:
    path = home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    data = launchd_plist(service_dir, env)  # checked before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    domain = f"gui/{os.getuid()}"
    run(["launchctl", "bootout", f"{domain}/{LAUNCHD_LABEL}"])  # an older copy, if loaded
    done = run(["launchctl", "bootstrap", domain, str(path)])
    if done.returncode != 0:
        raise OrchError(
            f"wrote {path}, but `launchctl bootstrap {domain}` failed: "
            f"{(done.stderr or done.stdout).strip()}"
        )
    return InstallOutcome(
        path, [f"wrote {path}", f"loaded {LAUNCHD_LABEL} ({domain}): it starts at login"]
    )


def task_path(home: Path) -> Path:
    return home / "AppData" / "Local" / "orch" / f"{TASK_NAME}.task.xml"


def _install_task(service_dir: Path, home: Path, env: dict[str, str], run: Run) -> InstallOutcome:
    path = task_path(home)
    data = task_xml(service_dir, windows_user())  # checked before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    # No /RU or /RP: the task runs as this user in their logon session; no password is stored.
    create = ["schtasks", "/Create", "/XML", str(path), "/TN", TASK_NAME, "/F"]
    done = run(create)
    if done.returncode != 0:
        path.unlink()  # not registered: nothing is left that uninstall would have to undo
        raise OrchError(
            f"nothing installed: `{' '.join(create)}` failed: "
            f"{(done.stderr or done.stdout).strip() or 'exit ' + str(done.returncode)}\n"
            "if it says access is denied, run `orch local install` once from a terminal opened "
            'with "Run as administrator"; or run `orch local start` after each logon'
        )
    lines = [f"wrote {path}", f"registered the Scheduled Task {TASK_NAME}: it starts when "
             f"{windows_user()} logs on (in that session; no password stored)"]  # fmt: skip
    started = run(["schtasks", "/Run", "/TN", TASK_NAME])
    if started.returncode == 0:
        lines.append(f"started {TASK_NAME} now")
    else:
        lines.append(f"could not start it now ({(started.stderr or started.stdout).strip()}): "
                     "it starts at the next logon, or run `orch local start`")  # fmt: skip
    unset = sorted(k for k in env if k != "PATH")
    if unset:
        lines.append(
            "a Scheduled Task gets your stored user environment, not this shell's: "
            + ", ".join(f"{k}={env[k]}" for k in unset)
            + " must be set with `setx NAME VALUE` for the task to see them"
        )
    return InstallOutcome(path, lines)


def uninstall(
    *, platform: str = sys.platform, home: Path | None = None, run: Run = run_command
) -> list[str]:
    home = home or Path.home()
    if platform == "win32":
        path = task_path(home)
        if path.exists():
            done = run(["schtasks", "/Delete", "/TN", TASK_NAME, "/F"])
            if done.returncode != 0:
                why = (done.stderr or done.stdout).strip()
                raise OrchError(f"`schtasks /Delete /TN {TASK_NAME}` failed: {why}; {path} is kept")
    elif platform == "darwin":
        path = home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
        run(["launchctl", "bootout", f"gui/{os.getuid()}/{LAUNCHD_LABEL}"])
    else:
        path = home / ".config" / "systemd" / "user" / UNIT_NAME
        if path.exists():
            run(["systemctl", "--user", "disable", "--now", UNIT_NAME])
    if not path.exists():
        return [f"nothing installed ({path} does not exist)"]
    path.unlink()
    if platform.startswith("linux"):
        run(["systemctl", "--user", "daemon-reload"])
    return [
        f"removed {path}; the service no longer starts at boot (`orch local stop` stops it now)"
    ]
