"""Fixture trees (tests/fixtures/telemetry) copied per test, and a clock the test moves."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "telemetry"


class FakeTree:
    """A writable copy of a fixture root; counters are rewritten between samples."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write(self, rel: str, value: object) -> None:
        path = self.path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")

    def read_int(self, rel: str) -> int:
        return int(self.path(rel).read_text())

    def add(self, rel: str, amount: int) -> None:
        self.write(rel, self.read_int(rel) + amount)

    def fdinfo_add(self, pid: int, fd: int, key: str, amount: int) -> None:
        """Advance `drm-<key>: N ns` in /proc/PID/fdinfo/FD, keeping the kernel's layout."""
        path = self.path(f"proc/{pid}/fdinfo/{fd}")
        text = path.read_text()
        pattern = re.compile(rf"^(drm-{re.escape(key)}:\s*)(\d+)", re.MULTILINE)
        match = pattern.search(text)
        assert match, f"{key} not in {path}"
        new = int(match.group(2)) + amount
        path.write_text(text[: match.start(2)] + str(new) + text[match.end(2) :])


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def strix(tmp_path: Path) -> FakeTree:
    """The Strix Halo tree: amdgpu APU card, RAPL, llama-server 4242 with child 4250."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "strix_halo", root, symlinks=True)
    return FakeTree(root)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
