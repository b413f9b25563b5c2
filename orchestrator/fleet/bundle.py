"""What gets installed on the boxes: this orch, built into a wheel here, and maybe a wheelhouse.

Example::

    bundle = build_bundle(Path(tmp), wheelhouse=None)   # FleetError if it cannot be built
    bundle.wheel, bundle.fingerprint

The fingerprint is a hash of the wheel's RECORD (every file's sha256), not of the zip: two
builds of the same source differ in zip timestamps only, and must count as the same install.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import FleetError


@dataclass(frozen=True)
class Bundle:
    wheel: Path
    version: str
    fingerprint: str
    # Dependency wheels for an offline install (`pip --no-index`); empty: boxes use the index.
    wheelhouse: tuple[Path, ...]


def project_root() -> Path | None:
    """The source checkout this orch runs from (an editable install), if there is one."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "orch"' in pyproject.read_text():
        return root
    return None


def build_bundle(out_dir: Path, wheelhouse: Path | None) -> Bundle:
    """Build orch's wheel from its checkout into `out_dir` (offline when a wheelhouse is given:
    pip takes the build backend, setuptools, from it)."""
    root = project_root()
    if root is None:
        raise FleetError(
            "orch fleet deploy installs the orch you run, built from its source checkout, but "
            "this orch was installed without one: install orch with `pip install -e CHECKOUT`"
        )
    argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out_dir)]
    if wheelhouse is not None:
        argv += ["--no-index", "--find-links", str(wheelhouse)]
    with tempfile.TemporaryDirectory(prefix="orch-wheel-src-") as tmp:
        done = subprocess.run([*argv, str(_clean_copy(root, Path(tmp)))], capture_output=True,
                              text=True)  # fmt: skip
    wheels = sorted(out_dir.glob("orch-*.whl"))
    if done.returncode != 0 or not wheels:
        hint = (
            f" (the wheelhouse {wheelhouse} needs setuptools>=77 to build orch offline)"
            if wheelhouse is not None
            else ""
        )
        raise FleetError(f"building the orch wheel failed{hint}:\n{done.stderr[-2000:]}")
    wheel = wheels[-1]
    house = dependency_wheels(wheelhouse) if wheelhouse is not None else ()
    return Bundle(wheel, _version(wheel), wheel_fingerprint(wheel), house)


# What the wheel is built from (pyproject.toml's packages and readme), and nothing else.
_SOURCES = ("pyproject.toml", "README.md", "jobs", "orchestrator", "worker")


def _clean_copy(root: Path, dest: Path) -> Path:
    """The checkout's sources without build leftovers: setuptools builds in `build/lib` and
    never removes from it, so a module deleted from the checkout would still be deployed."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in _SOURCES:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def dependency_wheels(wheelhouse: Path) -> tuple[Path, ...]:
    """The wheelhouse's wheels but orch's own (the deploy installs the one it just built)."""
    return tuple(sorted(p for p in wheelhouse.glob("*.whl") if not p.name.startswith("orch-")))


def wheel_fingerprint(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        return hashlib.sha256(zf.read(record)).hexdigest()


def _version(wheel: Path) -> str:
    return wheel.name.split("-")[1]
