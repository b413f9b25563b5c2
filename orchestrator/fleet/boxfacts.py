"""What a box offers for the agent, read over SSH in one round trip (`orch fleet facts`).

This is about the box as a place to install to (Python, systemd, sudo, disk). The benchmark
fingerprint (GPU, carve-out, power) is the agent's own, in `orch hosts`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from orchestrator.errors import HostError
from orchestrator.fleet.remote import Box
from orchestrator.fleet.units import expand_home

MIN_PYTHON = (3, 11)

_SCRIPT = """\
d={dir}
while [ ! -d "$d" ]; do d=$(dirname "$d"); done
echo "home=$HOME"
echo "user=$(id -un)"
echo "uid=$(id -u)"
echo "os=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME" || uname -s)"
echo "kernel=$(uname -r)"
echo "arch=$(uname -m)"
echo "cpus=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"
echo "mem_kb=$(awk '/^MemTotal:/ {{print $2}}' /proc/meminfo 2>/dev/null)"
echo "systemd=$(test -d /run/systemd/system && echo yes || echo no)"
echo "setsid=$(command -v setsid >/dev/null 2>&1 && echo yes || echo no)"
echo "sudo=$(sudo -n true >/dev/null 2>&1 && echo yes || echo no)"
echo "disk_free_kb=$(df -Pk "$d" | awk 'NR==2 {{print $4}}')"
echo "python=$({python} -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)"
echo "venv=$({python} -c 'import ensurepip, venv' >/dev/null 2>&1 && echo yes || echo no)"
"""


@dataclass(frozen=True)
class BoxFacts:
    home: str
    user: str
    uid: int
    os: str
    kernel: str
    arch: str
    cpus: str
    mem_gib: float | None
    systemd: bool
    setsid: bool  # for the supervisor mode, where systemd does not run
    sudo: bool
    disk_free_mb: int | None  # where the deploy folder is (or would be)
    python: str  # "3.11.7", or "" when the inventory's python does not run
    python_venv: bool  # `python -m venv` works (Debian needs python3-venv)

    @property
    def privileged(self) -> bool:
        return self.uid == 0 or self.sudo

    def deploy_root(self, deploy_dir: str) -> str:
        """`~/x` -> `/home/bench/x`: remote paths are absolute from here on."""
        return expand_home(deploy_dir, self.home)


def read_facts(box: Box) -> BoxFacts:
    t = box.target
    script = _SCRIPT.format(dir=shell_path(t.deploy_dir), python=shlex.quote(t.python))
    out = box.run(script).stdout
    raw = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    mem_kb = raw.get("mem_kb", "")
    disk_kb = raw.get("disk_free_kb", "")
    return BoxFacts(
        home=raw.get("home", ""),
        user=raw.get("user", ""),
        uid=int(raw.get("uid") or -1),
        os=raw.get("os", ""),
        kernel=raw.get("kernel", ""),
        arch=raw.get("arch", ""),
        cpus=raw.get("cpus", ""),
        mem_gib=round(int(mem_kb) / 2**20, 1) if mem_kb.isdigit() else None,
        systemd=raw.get("systemd") == "yes",
        setsid=raw.get("setsid") == "yes",
        sudo=raw.get("sudo") == "yes",
        disk_free_mb=int(disk_kb) // 1024 if disk_kb.isdigit() else None,
        python=raw.get("python", ""),
        python_venv=raw.get("venv") == "yes",
    )


def shell_path(path: str) -> str:
    """`path` as one shell word, `~` (alone or as `~/...`) standing for the box's $HOME.

    >>> shell_path("~/a b")
    '"$HOME"\'/a b\''
    """
    if path == "~" or path.startswith("~/"):
        rest = path[1:]
        return '"$HOME"' + (shlex.quote(rest) if rest else "")
    return shlex.quote(path)


def check_installable(
    facts: BoxFacts, host: str, python: str, where: str, min_free_mb: int
) -> None:
    """HostError when the box cannot take the agent: no Python 3.11+, no venv, a full disk."""
    if not facts.python:
        raise HostError(
            host,
            "no Python 3.11",
            f"`{python}` does not run on the box: install Python 3.11+ and set "
            f"hosts.{host}.python to its path ({where})",
        )
    version = tuple(int(p) for p in facts.python.split(".")[:2])
    if version < MIN_PYTHON:
        raise HostError(
            host,
            "no Python 3.11",
            f"`{python}` is Python {facts.python}; orch needs 3.11 or newer: install it and "
            f"set hosts.{host}.python ({where})",
        )
    if not facts.python_venv:
        raise HostError(
            host,
            "no venv",
            f"`{python} -m venv` is not available (Debian/Ubuntu: apt install "
            f"python{version[0]}.{version[1]}-venv)",
        )
    if facts.disk_free_mb is not None and facts.disk_free_mb < min_free_mb:
        raise HostError(
            host,
            "disk full",
            f"{facts.disk_free_mb} MB free where the agent goes; it needs {min_free_mb} MB "
            "(min_free_mb in the inventory)",
        )
