"""Reading the kernel's small text files (sysfs, procfs), shared by facts and telemetry.

Both treat every OSError as "no value": sysfs attributes can exist and still fail to read
(amdgpu answers EINVAL or EPERM while the GPU is in reset or suspended).
"""

from __future__ import annotations

import os
from pathlib import Path

_CHUNK = 65536


def read_text(path: Path | str) -> str | None:
    """A file's text, or None when it is absent or unreadable.

    os.open/os.read instead of Path.read_text: the sampler reads a dozen files at 10 Hz and the
    buffered-IO layers are a visible part of its CPU time. Files are read to the end (procfs
    hands out /proc/cpuinfo a page at a time; pci.ids is megabytes).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, _CHUNK):  # procfs returns short reads: read to the end
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")
    except OSError:  # a driver error (EINVAL, EBUSY...) at read time
        return None
    finally:
        os.close(fd)


def read_int(path: Path) -> int | None:
    """An integer attribute: sysfs writes ids in hex ("0x1002"), sizes and counters in decimal."""
    text = read_text(path)
    if text is None:
        return None
    value = text.strip()
    try:
        return int(value, 16 if value.lower().startswith("0x") else 10)
    except ValueError:
        return None


_MEMINFO_UNITS = {"kB": 1024, "": 1}  # the kernel writes "kB" and means KiB; counters have none


def parse_meminfo(text: str) -> dict[str, int]:
    """`MemTotal:  131072000 kB` -> {"MemTotal": 134217728000} (bytes)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts or not parts[0].isdigit():
            continue
        unit = parts[1] if len(parts) > 1 else ""
        if unit in _MEMINFO_UNITS:
            values[key.strip()] = int(parts[0]) * _MEMINFO_UNITS[unit]
    return values
