"""Reading the kernel's small text files (sysfs, procfs), shared by facts and telemetry.

Both treat every OSError as "no value": sysfs attributes can exist and still fail to read
(amdgpu answers EINVAL or EPERM while the GPU is in reset or suspended).
"""

from __future__ import annotations

import os
from pathlib import Path

_CHUNK = 65536


def read_text(path: Path) -> str | None:
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
