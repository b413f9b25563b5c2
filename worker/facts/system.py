"""Hostname, kernel release and OS name.

All three come from files (not `uname` or `socket.gethostname`), so a fixture tree decides them.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from worker.facts._common import FactLog, first_line, shown
from worker.sysfs import read_text

HOSTNAME = "proc/sys/kernel/hostname"
OSRELEASE = "proc/sys/kernel/osrelease"
# os-release(5): /etc/os-release first, /usr/lib/os-release as the vendor's fallback.
OS_RELEASE_FILES = ("etc/os-release", "usr/lib/os-release")


@dataclass(frozen=True)
class SystemInfo:
    hostname: str | None
    kernel: str | None
    os: str | None


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines; values use shell quoting and escapes (os-release(5))."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            parts = shlex.split(raw)
            value = parts[0] if parts else ""
        except ValueError:  # unbalanced quotes: keep what is there rather than nothing
            value = raw.strip("\"'")
        fields[key.strip()] = value
    return fields


def read_system(root: Path, log: FactLog) -> SystemInfo:
    hostname = first_line(read_text(root / HOSTNAME))
    if hostname is None:
        log.note(f"hostname: {shown(root, root / HOSTNAME)} is missing or unreadable")
    kernel = first_line(read_text(root / OSRELEASE))
    if kernel is None:
        log.note(f"kernel: {shown(root, root / OSRELEASE)} is missing or unreadable")
    return SystemInfo(hostname=hostname, kernel=kernel, os=_read_os(root, log))


def _read_os(root: Path, log: FactLog) -> str | None:
    for name in OS_RELEASE_FILES:
        text = read_text(root / name)
        if text is None:
            continue
        fields = parse_os_release(text)
        # PRETTY_NAME may be absent; os-release(5) says to fall back to NAME then "Linux".
        pretty = fields.get("PRETTY_NAME") or fields.get("NAME")
        if pretty:
            return pretty
        log.note(f"os: /{name} has neither PRETTY_NAME nor NAME")
        return None
    log.note("os: neither /etc/os-release nor /usr/lib/os-release exists")
    return None
