"""What `orch fleet deploy` writes on a box: file layout, systemd units, the supervisor script.

Three ways to keep the agent running, chosen per box (`Mode`):

- `systemd`: a system unit `/etc/systemd/system/orch-agent.service` with `User=` (root or
  passwordless sudo on the box);
- `systemd-user`: a user unit in `~/.config/systemd/user/` with lingering on, so it runs
  without a login session (no sudo);
- `supervisor`: where systemd is not running (containers, some minimal installs): a small
  restart loop started with `setsid`, its pid in `agent.pid` and its output in `agent.log`
  under the deploy folder. It does not come back after a reboot: run `orch fleet deploy` again.
  It needs only `setsid`, `kill` and /proc on the box (no `ps`, missing from slim images).
  `agent.log` is rotated (one old copy kept) when it is over 10 MB at a (re)start, not while
  the agent runs: a long-running agent's log grows until the next `orch fleet restart`.

Every text here is a pure function of its inputs, so a second deploy can compare what it would
write with what is on the box and change nothing when they agree.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from enum import StrEnum

SERVICE = "orch-agent"
SYSTEM_UNIT_PATH = f"/etc/systemd/system/{SERVICE}.service"
USER_UNIT_DIR = ".config/systemd/user"  # under the box user's home


class Mode(StrEnum):
    SYSTEMD = "systemd"
    SYSTEMD_USER = "systemd-user"
    SUPERVISOR = "supervisor"


def choose_mode(systemd_running: bool, privileged: bool, wanted: str = "auto") -> Mode:
    """A system unit where we may write one, else a user unit, else the supervisor loop;
    or the mode the inventory asks for (`service:`), ValueError when the box cannot have it."""
    if wanted != "auto":
        mode = Mode(wanted)
        if mode is not Mode.SUPERVISOR and not systemd_running:
            raise ValueError(f"service: {mode.value} needs systemd, which does not run there")
        if mode is Mode.SYSTEMD and not privileged:
            raise ValueError("service: systemd needs root or passwordless sudo (sudo: true)")
        return mode
    if not systemd_running:
        return Mode.SUPERVISOR
    return Mode.SYSTEMD if privileged else Mode.SYSTEMD_USER


@dataclass(frozen=True)
class Layout:
    """Where things are on the box, under the deploy folder `root` (an absolute path)."""

    root: str

    @property
    def venv(self) -> str:
        return f"{self.root}/venv"

    @property
    def orch(self) -> str:
        return f"{self.root}/venv/bin/orch"

    @property
    def wheels(self) -> str:
        return f"{self.root}/wheels"

    @property
    def dist(self) -> str:
        return f"{self.root}/dist"

    @property
    def config(self) -> str:
        return f"{self.root}/worker.yaml"

    @property
    def env_file(self) -> str:
        return f"{self.root}/agent.env"

    @property
    def ca_file(self) -> str:
        return f"{self.root}/broker-ca.pem"

    @property
    def script(self) -> str:
        return f"{self.root}/agent.sh"

    @property
    def pidfile(self) -> str:
        return f"{self.root}/agent.pid"

    @property
    def log(self) -> str:
        return f"{self.root}/agent.log"

    @property
    def state(self) -> str:
        return f"{self.root}/state.json"

    def worker_argv(self) -> list[str]:
        return [self.orch, "worker", "--config", self.config]


def env_file_text(broker_url: str, env: dict[str, str]) -> str:
    """`KEY='value'` lines that both systemd's EnvironmentFile= and `sh`'s `.` read alike.

    Values never hold `'`, `\\` or newlines (the inventory refuses them; the broker URL's
    password is percent-encoded), so single quotes are enough.
    """
    lines = ["# written by orch fleet deploy; holds the broker password: keep it mode 600"]
    for name, value in {"ORCH_BROKER_URL": broker_url, **env}.items():
        if "'" in value or "\n" in value or "\\" in value:
            raise ValueError(f"{name}: value cannot hold ', \\ or a newline")
        lines.append(f"{name}='{value}'")
    return "\n".join(lines) + "\n"


def systemd_unit(layout: Layout, mode: Mode, user: str) -> str:
    """The unit file; `User=` only in a system unit (a user unit runs as its owner)."""
    if mode is Mode.SUPERVISOR:
        raise ValueError("the supervisor mode has no systemd unit")
    service = [
        "[Service]",
        "Type=simple",
        *([f"User={unit_value(user)}"] if mode is Mode.SYSTEMD else []),
        f"WorkingDirectory={unit_value(layout.root)}",
        f"EnvironmentFile={unit_value(layout.env_file)}",
        f"ExecStart={' '.join(unit_arg(a) for a in layout.worker_argv())}",
        # The agent exits 0 when another agent took its host's lease: do not fight it.
        "Restart=on-failure",
        "RestartSec=10",
        # SIGTERM stops the agent; the next agent re-queues a job it left unacknowledged.
        "KillSignal=SIGTERM",
        "TimeoutStopSec=60",
        "UMask=0077",
    ]
    wanted_by = "multi-user.target" if mode is Mode.SYSTEMD else "default.target"
    return "\n".join(
        [
            "# written by orch fleet deploy",
            "[Unit]",
            "Description=orch benchmark agent (orch worker)",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            *service,
            "",
            "[Install]",
            f"WantedBy={wanted_by}",
            "",
        ]
    )


def unit_value(value: str) -> str:
    """A value for a unit setting that takes no quotes (a path, a user name): `%` escaped as
    systemd's `%%`; ValueError for what would end the line or change its meaning."""
    if not value or any(c.isspace() or ord(c) < 32 or c in "\\\"'" for c in value):
        raise ValueError(f"{value!r} cannot go into a systemd unit (space, quote or control)")
    return value.replace("%", "%%")


def unit_arg(arg: str) -> str:
    """One ExecStart= argument, double-quoted the systemd way: `\\`, `"` escaped, `%` as
    `%%` (specifiers) and `$` as `$$` (variable expansion). Newlines are refused."""
    if any(ord(c) < 32 for c in arg):
        raise ValueError(f"{arg!r} cannot go into a systemd unit (control character)")
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def supervisor_script(layout: Layout) -> str:
    """The restart loop for boxes without systemd (like Restart=on-failure, RestartSec=10).

    Started with `setsid`, so the loop and the agent form their own process group whose id
    is in `agent.pid`; stopping signals the whole group.
    """
    q = shlex.quote
    return "\n".join(
        [
            "#!/bin/sh",
            "# written by orch fleet deploy: runs the orch agent where systemd does not",
            f"echo $$ > {q(layout.pidfile)}",
            "set -a",
            f". {q(layout.env_file)}",
            "set +a",
            "umask 077",
            f"cd {q(layout.root)} || exit 1",
            "while :; do",
            f"    {' '.join(q(a) for a in layout.worker_argv())}",
            "    code=$?",
            '    [ "$code" -eq 0 ] && exit 0',
            '    echo "orch fleet supervisor: orch worker exited with $code; again in 10 s"',
            "    sleep 10",
            "done",
            "",
        ]
    )


def unit_path(mode: Mode, home: str) -> str:
    if mode is Mode.SYSTEMD:
        return SYSTEM_UNIT_PATH
    return f"{home}/{USER_UNIT_DIR}/{SERVICE}.service"


def expand_home(path: str, home: str) -> str:
    """`~/x` -> `/home/bench/x`: paths on the box are absolute from here on."""
    if path == "~" or path.startswith("~/"):
        return home + path[1:]
    return path
