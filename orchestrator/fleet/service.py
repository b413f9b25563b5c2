"""Start, stop, check and read the logs of the agent on a box, in each service mode.

Example::

    service.restart(box, layout, Mode.SUPERVISOR)
    service.is_running(box, layout, Mode.SUPERVISOR)   # True
"""

from __future__ import annotations

import shlex
import time

from orchestrator.errors import HostError
from orchestrator.fleet.remote import Box
from orchestrator.fleet.units import SERVICE, Layout, Mode

_USER_ENV = 'XDG_RUNTIME_DIR="/run/user/$(id -u)" '
_UP_FOR_S = 2.0
_LOG_MAX_BYTES = 10 * 2**20
# Is any process of group $pid alive (not a zombie)? From /proc, as `ps` is missing from
# slim images: the state and group follow the last ") " of each stat line (comm may hold one).
_GROUP_ALIVE = 'cat /proc/[0-9]*/stat 2>/dev/null | awk -v g="$pid" ' + shlex.quote(
    '{sub(/^.*\\) /, ""); if ($3 == g && $1 != "Z") f = 1} END {exit !f}'
)


def _systemctl(box: Box, mode: Mode, args: str, check: bool = True) -> int:
    if mode is Mode.SYSTEMD:
        result = box.run(f"systemctl {args}", sudo=box.target.user != "root", check=check)
    else:
        result = box.run(f"{_USER_ENV}systemctl --user {args}", check=check)
    return int(result.exited)


def install_unit(box: Box, mode: Mode, path: str, unit: bytes) -> bool:
    """Write the unit where it differs, reload systemd and enable it; True if it changed."""
    if box.read(path) == unit:
        return False
    q = shlex.quote
    if mode is Mode.SYSTEMD:
        staged = f"{path.rsplit('/', 1)[1]}.staged"
        home = box.run("pwd").stdout.strip()
        box.write(f"{home}/{staged}", unit)
        box.run(
            f"install -m 644 {q(home + '/' + staged)} {q(path)} && rm -f {q(home + '/' + staged)}",
            sudo=box.target.user != "root",
        )
    else:
        box.run(f"mkdir -p {q(path.rsplit('/', 1)[0])}")
        box.write(path, unit)
    _systemctl(box, mode, "daemon-reload")
    _systemctl(box, mode, f"enable {SERVICE}")
    return True


def ensure_linger(box: Box) -> None:
    """Lingering keeps a user's services running without a login session: without it the
    user-unit agent would stop at logout. Turn it on; HostError when it stays off."""
    show = 'loginctl show-user "$(id -un)" -p Linger'
    if "Linger=yes" in box.run(show, check=False).stdout:
        return
    enable = box.run('loginctl enable-linger "$(id -un)"', check=False)
    if "Linger=yes" not in box.run(show, check=False).stdout:
        why = (enable.stderr or "").strip().splitlines()[-1:] or ["Linger is still off"]
        raise HostError(
            box.target.name,
            "no linger",
            f"`loginctl enable-linger {box.target.user}` did not take ({why[0]}): the agent "
            "would stop at logout. Have an admin run it on the box, or set sudo: true "
            f"(passwordless) for a system unit ({box.target.where})",
        )


def is_running(box: Box, layout: Layout, mode: Mode) -> bool:
    if mode is Mode.SUPERVISOR:
        return bool(box.run(supervisor_alive_command(layout), check=False).exited == 0)
    return _systemctl(box, mode, f"is-active --quiet {SERVICE}", check=False) == 0


def restart(box: Box, layout: Layout, mode: Mode) -> None:
    if mode is not Mode.SUPERVISOR:
        _systemctl(box, mode, f"restart {SERVICE}")
        return
    stop(box, layout, mode)
    q = shlex.quote
    # setsid: the loop and the agent get their own session, so closing this SSH session
    # does not end them; every descriptor is redirected so that it can close at once.
    box.run(
        f"umask 077 && cd {q(layout.root)} && rm -f {q(layout.pidfile)} || exit 1\n"
        # One old log is kept, so that agent.log stays small without logrotate.
        f'[ -f {q(layout.log)} ] && [ "$(wc -c < {q(layout.log)})" -gt {_LOG_MAX_BYTES} ] '
        f"&& mv -f {q(layout.log)} {q(layout.log)}.1\n"
        f"setsid sh {q(layout.script)} >> {q(layout.log)} 2>&1 < /dev/null &\n"
        f"for i in $(seq 50); do test -s {q(layout.pidfile)} && exit 0; sleep 0.1; done; exit 1"
    )


def stop(box: Box, layout: Layout, mode: Mode) -> bool:
    """Stop the agent; True if it was running."""
    was_running = is_running(box, layout, mode)
    if mode is not Mode.SUPERVISOR:
        _systemctl(box, mode, f"stop {SERVICE}", check=False)
        return was_running
    if not was_running:
        return False
    box.run(supervisor_stop_command(layout))
    return True


def supervisor_stop_command(layout: Layout) -> str:
    """SIGTERM to the whole group: the loop ends and the agent shuts down (a job it was
    running is re-queued by the next agent); SIGKILL after 60 s. Zombies (exited, not yet
    reaped by init) do not count as running. `kill -SIG -PGID`, not `kill -SIG -- -PGID`,
    which dash's kill refuses."""
    pidfile = shlex.quote(layout.pidfile)
    return (
        f'pid=$(cat {pidfile}); kill -TERM "-$pid" 2>/dev/null\n'
        f"for i in $(seq 600); do {_GROUP_ALIVE} || break; sleep 0.1; done\n"
        f'kill -KILL "-$pid" 2>/dev/null; rm -f {pidfile}; true'
    )


def wait_running(box: Box, layout: Layout, mode: Mode) -> None:
    """HostError with the log's tail when the agent is not running a moment after its start."""
    time.sleep(_UP_FOR_S)
    if not is_running(box, layout, mode):
        raise HostError(
            box.target.name,
            "agent did not start",
            f"its log ends with:\n{logs(box, layout, mode, 15)}",
        )


def logs(box: Box, layout: Layout, mode: Mode, lines: int) -> str:
    if mode is Mode.SUPERVISOR:
        command = f"tail -n {lines} {shlex.quote(layout.log)}"
        return str(box.run(command, check=False).stdout)
    if mode is Mode.SYSTEMD:
        command = f"journalctl -u {SERVICE} -n {lines} --no-pager"
        return str(box.run(command, sudo=box.target.user != "root", check=False).stdout)
    command = f"{_USER_ENV}journalctl --user -u {SERVICE} -n {lines} --no-pager"
    return str(box.run(command, check=False).stdout)


def supervisor_alive_command(layout: Layout) -> str:
    """Exit 0 when the pid in agent.pid runs and is our loop (a pid reused by another program
    after a reboot does not count); `kill -0` and /proc only, no `ps`."""
    pidfile, script = shlex.quote(layout.pidfile), shlex.quote(layout.script)
    return (
        f'pid=$(cat {pidfile} 2>/dev/null) && kill -0 "$pid" 2>/dev/null '
        f'&& tr "\\000" " " < "/proc/$pid/cmdline" | grep -qF {script}'
    )
