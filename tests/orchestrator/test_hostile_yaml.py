"""Hostile YAML: a matrix (or fleet) file that is huge, an alias bomb, nested without end,
binary, or gives a key twice is refused with file:line, within bounded memory, never with a
traceback or by keeping the last of two values."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from jobs.yamlfile import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES
from orchestrator.errors import InventoryError, MatrixError
from orchestrator.fleet.inventory import load_inventory
from orchestrator.matrixfile import MatrixFile, load_matrix_file

T = TypeVar("T")

GOOD = """\
campaign: c1
workload: {prompt_tokens: 16, gen_tokens: 8}
hosts: [laptop-80w]
matrix:
  model: ["tiny:q8_0"]
  backend: [cpu]
  context: [128, 256]
"""


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "matrix.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _refused(path: Path) -> list[str]:
    with pytest.raises(MatrixError) as info:
        load_matrix_file(path)
    return info.value.problems


def _peak_mib(fn: Callable[[], T]) -> tuple[T | BaseException, float]:
    """What `fn` returned or raised, and the most memory Python held meanwhile (MiB)."""
    tracemalloc.start()
    try:
        outcome: T | BaseException = fn()
    except Exception as exc:
        outcome = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return outcome, peak


def _laughs(levels: int) -> str:
    """The "billion laughs": each level lists the one before ten times, 10**levels in all."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return GOOD + "\n".join(lines) + "\n"


# -- the good file still loads ------------------------------------------------------------------


def test_the_bounds_leave_an_ordinary_file_alone(tmp_path: Path) -> None:
    mf = load_matrix_file(_write(tmp_path, GOOD))
    assert isinstance(mf, MatrixFile) and [j.context for j in mf.jobs] == [128, 256]


def test_merge_keys_and_one_key_in_two_mappings_are_not_duplicates(tmp_path: Path) -> None:
    # `<<: *base` then a key of its own overrides the merged one: YAML's way, not a duplicate.
    text = GOOD.replace(
        "matrix:\n",
        "configurations:\n"
        "  base: &base {vram_split: 512M, platform_profile: low-power}\n"
        "  fast: {<<: *base, platform_profile: performance}\n"
        "matrix:\n  configuration: [base, fast]\n",
    )
    jobs = load_matrix_file(_write(tmp_path, text)).jobs
    assert {(j.config_name, j.settings["platform_profile"]) for j in jobs} == {
        ("base", "low-power"),
        ("fast", "performance"),
    }
    assert {j.configuration["vram_split"] for j in jobs} == {"512M"}


# -- size and encoding --------------------------------------------------------------------------


def test_a_file_over_the_size_cap_is_refused_unparsed(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + "#" * MAX_FILE_BYTES)
    (problem,) = _refused(path)
    assert problem == (
        f"{path}: larger than 4 MiB, the most orch reads from a YAML file: split it into "
        "several files"
    )


def test_bytes_that_are_not_utf8_name_their_line(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00"
    path = _write(tmp_path, GOOD.encode() + png)
    (problem,) = _refused(path)
    assert problem == (
        f"{path}:8: not UTF-8 text (byte 0x89): is this the right file? Save it as UTF-8"
    )


def test_control_characters_are_refused_with_their_line(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("[laptop-80w]", "[laptop\x00-80w]"))
    (problem,) = _refused(path)
    assert problem == f"{path}:3: not a text file: character #x0000 is not allowed in YAML"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("2020-13-45", "month must be in 1..12"),  # looks like a date, is none
        ("!!int twelve", "invalid literal for int()"),
        ("!!float lots", "could not convert string to float"),
    ],
)
def test_a_value_that_breaks_its_type_names_its_line(tmp_path: Path, value: str, why: str) -> None:
    path = _write(tmp_path, GOOD.replace("campaign: c1", f"campaign: {value}"))
    (problem,) = _refused(path)
    assert problem.startswith(f"{path}:1: invalid YAML: cannot read this value: {why}")


# -- aliases --------------------------------------------------------------------------------


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    # Seven lines that expand to a million values (the old code indexed every one of them).
    path = _write(tmp_path, _laughs(6))
    outcome, peak_mib = _peak_mib(lambda: load_matrix_file(path))

    assert isinstance(outcome, MatrixError)
    assert outcome.problems == [
        f"{path}:13: more than {MAX_NODES:,} values once aliases are expanded, the most orch "
        "reads from a YAML file: split it into several files"
    ]
    assert peak_mib < 32, peak_mib  # a few lines of YAML, not the million values


def test_aliases_within_the_bound_still_work(tmp_path: Path) -> None:
    text = GOOD.replace('model: ["tiny:q8_0"]', 'model: &models ["tiny:q8_0", "tiny:q4_k_m"]')
    text += "include:\n  - {host: laptop-80w, model: *tiny, backend: cpu, context: 512}\n"
    text = text.replace('&models ["tiny:q8_0"', '&models [&tiny "tiny:q8_0"')
    jobs = load_matrix_file(_write(tmp_path, text)).jobs
    assert [(j.model, j.context) for j in jobs][-1] == ("tiny:q8_0", 512)
    assert len(jobs) == 5


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("[laptop-80w]", "&loop [laptop-80w, *loop]"))
    assert _refused(path) == [f"{path}:3: alias *loop refers to a value that contains it"]


# -- nesting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nested",
    [
        " " + "[" * 100_000 + "]" * 100_000,  # far past Python's recursion limit
        " " + "{a: " * 100_000 + "1" + "}" * 100_000,
        "\n"
        + "\n".join(" " * i + "a:" for i in range(1, 200))
        + " 1",  # block style, one key a line
    ],
    ids=["flow-lists", "flow-mappings", "block-mappings"],
)
def test_deep_nesting_is_refused_without_a_traceback(tmp_path: Path, nested: str) -> None:
    path = _write(tmp_path, GOOD + "deep:" + nested + "\n")
    (problem,) = _refused(path)
    assert problem.startswith(f"{path}:")
    assert problem.endswith(f": nested deeper than {MAX_DEPTH} levels")


def test_nesting_at_the_bound_is_read(tmp_path: Path) -> None:
    # The matrix sits at depth 2; `deep` adds MAX_DEPTH - 1 lists under the top-level mapping.
    path = _write(tmp_path, GOOD + "deep: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))
    # Read, then refused by validation as an unknown key: the bound is not what stops it.
    assert _refused(path) == [f"{path}:8: deep: unknown key"]


# -- duplicate keys ---------------------------------------------------------------------------


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    text = GOOD.replace("  context: [128, 256]\n", "  context: [128, 256]\n  context: [512]\n")
    text = text.replace("campaign: c1\n", "campaign: c1\n") + "campaign: c2\n"
    path = _write(tmp_path, text)
    assert _refused(path) == [
        f"{path}:8: duplicate key 'context' (first at line 7)",
        f"{path}:9: duplicate key 'campaign' (first at line 1)",
    ]


def test_a_key_twice_on_one_line_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path, GOOD.replace("{prompt_tokens: 16,", "{prompt_tokens: 16, prompt_tokens: 9,")
    )
    assert _refused(path) == [f"{path}:2: duplicate key 'prompt_tokens' (first at line 2)"]


def test_the_fleet_inventory_gets_the_same_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "fleet.yaml"
    path.write_text("broker: {url: redis://h:6379/0}\nhosts: {}\nbroker: {url: redis://x/0}\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert info.value.problems == [f"{path}:3: duplicate key 'broker' (first at line 1)"]
