"""What every fact reader shares: reading under a root, and a log of notes and sources.

Readers take `root` so that tests point them at a fixture tree shaped like `/`; the paths they
quote in notes and sources are the ones on the box (`/sys/...`), never the fixture's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FactLog:
    """Collects why a fact is missing (`notes`) and where a found one came from (`sources`)."""

    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def source(self, fact: str, where: str) -> None:
        self.sources[fact] = where


def shown(root: Path, path: Path) -> str:
    """`path` as it is named on the box: `/sys/...` even when read from a fixture tree."""
    try:
        return "/" + path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def first_line(text: str | None) -> str | None:
    if text is None:
        return None
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None
