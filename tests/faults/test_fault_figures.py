"""scripts/fault-figures: the figures files of one or more runs as the README's table, and a
message (not a traceback) for anything else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.faults.accounting import Figures

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fault-figures"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def _figures(scenario: str, restarted: int, wall_s: float) -> Figures:
    return Figures(
        scenario=scenario,
        submitted=3,
        stored=3,
        lost=0,
        duplicated=0,
        overlaps=0,
        runs=3 + restarted,
        runs_restarted=restarted,
        completed_twice=0,
        stray_runs=0,
        wall_s=wall_s,
    )


def test_one_row_per_scenario_summed_over_runs(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _figures("agent_sigkill_mid_job", 1, 20.0).write(first)
    _figures("store_damaged_mid_campaign", 0, 9.0).write(first)
    _figures("agent_sigkill_mid_job", 1, 30.0).write(second)
    done = _run(str(first), str(second))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| scenario | runs | jobs submitted | stored | lost |")
    assert len({line.count("|") for line in lines}) == 1
    assert lines[2] == "| agent_sigkill_mid_job | 2 | 6 | 6 | 0 | 0 | 0 | 2 | 0 | 0 | 25 (20-30) |"
    assert lines[3] == "| store_damaged_mid_campaign | 1 | 3 | 3 | 0 | 0 | 0 | 0 | 0 | 0 | 9 |"


def test_anything_else_is_a_message(tmp_path: Path) -> None:
    assert _run().returncode == 2
    assert "no figures" in _run(str(tmp_path)).stderr
    (tmp_path / "x.json").write_text('{"scenario": "x", "lost": "none"}')
    done = _run(str(tmp_path))
    assert done.returncode != 0 and "lacks the counts" in done.stderr
    (tmp_path / "x.json").write_text("not json")
    done = _run(str(tmp_path))
    assert "is not a figures file" in done.stderr and "Traceback" not in done.stderr
    assert "is not a folder" in _run(str(tmp_path / "missing")).stderr
