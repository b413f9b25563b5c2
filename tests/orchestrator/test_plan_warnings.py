"""`orch plan`/`orch submit` warnings: a context above the model's trained context length.

The trained length comes from the model's GGUF (`<arch>.context_length`, the key llama.cpp's
gguf-py names `Keys.LLM.CONTEXT_LENGTH` in gguf-py/gguf/constants.py at ggml-org/llama.cpp
0024aa7417efd50a7c2a79e049dfbbbceb0beaaf), here a real tiny model written by the provisioner.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from jobs.modelshape import read_model_shape
from orchestrator.matrixfile import load_matrix_file
from orchestrator.plan import context_warnings, plan, render_plan
from worker.provision.tiny_model import write_tiny_models

MATRIX = """\
campaign: long
workload: {prompt_tokens: 64, gen_tokens: 32}
hosts: [halo, laptop]
matrix:
  model: ["tiny:q8_0"]
  context: [4K, 8K, 16K]
include:
  - {host: laptop, model: "tiny:q8_0", context: 64K}
"""


@pytest.fixture(scope="module")
def tiny_q8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    [model] = write_tiny_models(tmp_path_factory.mktemp("models"), quants=("q8_0",))
    return model.path


def _trained_length(path: Path) -> int:
    """Read straight from the file, not through orch's reader: the two must agree."""
    reader = gguf.GGUFReader(path)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    field = reader.get_field(gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch.contents()))
    assert field is not None
    return int(field.contents())


def test_contexts_above_the_trained_length_are_warned_about_at_their_line(
    tmp_path: Path, tiny_q8: Path
) -> None:
    trained = _trained_length(tiny_q8)
    assert read_model_shape(tiny_q8).context_length == trained
    assert trained == 8192  # the matrix's 8K is exactly the trained length: no warning
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    mf = load_matrix_file(path)
    rows = plan(mf.jobs, {"tiny:q8_0": tiny_q8}, None)
    assert {r.trained_context for r in rows} == {trained}

    warnings = context_warnings(mf, rows)

    tail = (
        f"is above tiny:q8_0's trained context length of {trained} tokens (GGUF "
        f"<arch>.context_length, file {tiny_q8}): llama.cpp warns of a possible training "
        "context overflow"
    )
    # One line per place in the file, not one per host.
    assert warnings == [
        f"{path}:6: matrix.context[2]: context 16384 {tail}",
        f"{path}:8: include[0].context: context 65536 {tail}",
    ]


def test_no_warning_without_a_known_shape(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    mf = load_matrix_file(path)
    rows = plan(mf.jobs, {}, None)  # no file, no broker: the shape is unknown
    assert all(r.trained_context is None for r in rows)
    assert context_warnings(mf, rows) == []


def test_the_plan_shows_workload_and_gpu_layers_only_when_the_matrix_has_them(
    tmp_path: Path, tiny_q8: Path
) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text(MATRIX)
    swept = tmp_path / "swept.yaml"
    swept.write_text(
        "campaign: sweep\nhosts: [halo]\n"
        "workloads: {short: {prompt_tokens: 64, gen_tokens: 32}, long: {prompt_tokens: 1024, "
        "gen_tokens: 32}}\n"
        "matrix: {model: ['tiny:q8_0'], context: [2K], backend: [vulkan], workload: [short, long], "
        "gpu_layers: [0, 999]}\n"
    )
    files = {"tiny:q8_0": tiny_q8}

    def header(path: Path) -> list[str]:
        text = render_plan(plan(load_matrix_file(path).jobs, files, None))
        return text.splitlines()[0].split()

    assert header(plain)[:4] == ["host", "model", "context", "configuration"]
    assert header(swept)[:6] == [
        "host",
        "model",
        "context",
        "workload",
        "gpu_layers",
        "configuration",
    ]
    lines = render_plan(plan(load_matrix_file(swept).jobs, files, None)).splitlines()
    assert {tuple(line.split()[3:5]) for line in lines[2:6]} == {
        ("short", "0"), ("short", "999"), ("long", "0"), ("long", "999"),
    }  # fmt: skip
