"""A sweep written in one workload (`concurrency: [1, 2, 4]`, issue 14's own syntax) becomes one
workload per level: the same jobs as naming each level, errors at the workload's lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.load import CONCURRENCY, REQUEST_RATE
from orchestrator.errors import MatrixError
from orchestrator.matrixfile import load_matrix_file
from orchestrator.report.pivot import campaign_axes

HEAD = """campaign: sweep
engine: llama-server
hosts: [box]
"""


def _load(tmp_path: Path, text: str) -> list[object]:
    path = tmp_path / "m.yaml"
    path.write_text(HEAD + text)
    return list(load_matrix_file(path).jobs)


def _errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "m.yaml"
    path.write_text(HEAD + text)
    with pytest.raises(MatrixError) as raised:
        load_matrix_file(path)
    return [m.replace(f"{path}:", "") for m in raised.value.problems]


def test_a_single_workload_sweep_is_the_same_as_naming_each_level(tmp_path: Path) -> None:
    swept = _load(
        tmp_path,
        """workload: {concurrency: [1, 2, 4], requests: 8, slots: 4}
matrix: {model: [m], backend: [cpu], context: [4096]}
""",
    )
    named = _load(
        tmp_path,
        """workloads:
  c1: {concurrency: 1, requests: 8, slots: 4}
  c2: {concurrency: 2, requests: 8, slots: 4}
  c4: {concurrency: 4, requests: 8, slots: 4}
matrix: {model: [m], backend: [cpu], context: [4096], workload: [c1, c2, c4]}
""",
    )
    assert [j.job_id for j in swept] == [j.job_id for j in named]  # type: ignore[attr-defined]
    axes = campaign_axes(swept)  # type: ignore[arg-type]
    assert sorted(a[CONCURRENCY] for a in axes) == [1, 2, 4]
    assert len({a["workload"] for a in axes}) == 1  # one workload at three levels


def test_named_sweeps_widen_the_axis_and_the_selectors(tmp_path: Path) -> None:
    jobs = _load(
        tmp_path,
        """workloads:
  chat: {request_rate: [0.5, 2], requests: 8, slots: 2}
  solo: {concurrency: 1, requests: 8}
matrix: {model: [m], backend: [cpu], context: [2048, 4096], workload: [chat, solo]}
exclude:
  - {workload: chat, context: 2048}
""",
    )
    got = sorted((j.workload_name, j.context) for j in jobs)  # type: ignore[attr-defined]
    assert got == [("chat-r0.5", 4096), ("chat-r2", 4096), ("solo", 2048), ("solo", 4096)]
    rates = {j.axes().get(REQUEST_RATE) for j in jobs}  # type: ignore[attr-defined]
    assert rates == {0.5, 2.0, None}


@pytest.mark.parametrize(
    ("workload", "says"),
    [
        ("{concurrency: [], requests: 8}", "a sweep lists 1 to 64 levels (got 0)"),
        ("{concurrency: [2, 2], requests: 8}", "a level is listed twice"),
        ("{concurrency: [1, two], requests: 8}", "every level must be a number"),
        ("{concurrency: [1, 2], requests: -8}", "greater than or equal"),
    ],
)
def test_a_bad_sweep_is_named_at_its_workloads_line(
    tmp_path: Path, workload: str, says: str
) -> None:
    errors = _errors(
        tmp_path,
        f"""workloads:
  chat: {workload}
matrix: {{model: [m], backend: [cpu], context: [4096], workload: [chat]}}
""",
    )
    assert any(e.startswith("5: workloads.chat") and says in e for e in errors), errors


def test_levels_named_like_an_existing_workload_are_refused(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        """workloads:
  chat: {concurrency: [1, 2], requests: 8}
  chat-c2: {concurrency: 2, requests: 4}
matrix: {model: [m], backend: [cpu], context: [4096], workload: [chat]}
""",
    )
    assert any("5: workloads.chat: the names of its levels ['chat-c2'] are taken" in e
               for e in errors), errors  # fmt: skip
