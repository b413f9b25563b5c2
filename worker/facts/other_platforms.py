"""Host facts on Windows and macOS: the platform's reader, then what every platform shares.

`detect_host_facts` calls `detect_other_platform` when the box is not Linux; the engines'
versions and the model hashes are read the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from jobs.facts import HostFacts
from worker.facts._common import FactLog
from worker.facts.engines import engine_versions
from worker.facts.macos import detect_macos
from worker.facts.models import hash_models
from worker.facts.tools import Tools
from worker.facts.windows import detect_windows

READERS: dict[str, Callable[[Tools, FactLog], dict[str, Any]]] = {
    "windows": detect_windows,
    "macos": detect_macos,
}


def detect_other_platform(
    platform: str,
    tools: Tools,
    *,
    binaries: dict[str, Path],
    models: dict[str, Path],
    cache_dir: Path,
    now: Callable[[], datetime],
) -> HostFacts:
    log = FactLog()
    reader = READERS.get(platform)
    fields = reader(tools, log) if reader is not None else {}
    if reader is None:
        log.note(f"facts: no reader for platform {platform!r}; only engines and models read")
    return HostFacts(
        **fields,
        engines=engine_versions(binaries, tools, log),
        models=hash_models(models, cache_dir, log),
        detected_at=now(),
        sources=log.sources,
        notes=log.notes,
    )
