"""Hostile matrices: one that crosses into millions of jobs is counted and refused before it is
built, and thousands of mistakes cost work linear in their number and print the first few and
a count. Work is counted, not timed: comparisons made by values that count their own `==`
(a search per value would compare each with all the others)."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from jobs.inventory import WorkerInventory
from jobs.matrix import Matrix, MatrixAxes, Selector
from jobs.spec import Workload
from orchestrator.broker import Fleet
from orchestrator.errors import MAX_PROBLEMS_SHOWN, MatrixError, SubmitError
from orchestrator.matrixexpand import MAX_JOBS, row_problems, rows, too_many_jobs
from orchestrator.matrixfile import MatrixFile, load_matrix_file
from orchestrator.submit import check_against_fleet

ROOT = Path(__file__).resolve().parents[2]


def _axis(values: list[Any]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def _matrix_text(models: list[str], contexts: list[int], extra: str = "") -> str:
    return (
        "campaign: c1\nworkload: {prompt_tokens: 16, gen_tokens: 8}\nhosts: [laptop-80w]\n"
        f"matrix:\n  model: {_axis(models)}\n  backend: [cpu]\n  context: {_axis(contexts)}\n"
        + extra
    )


class _Str(str):
    """A str that counts how often it is compared for equality."""

    compared = 0
    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        _Str.compared += 1
        return str.__eq__(self, other)


class _Int(int):
    """An int that counts how often it is compared for equality."""

    compared = 0
    __hash__ = int.__hash__

    def __eq__(self, other: object) -> bool:
        _Int.compared += 1
        return int.__eq__(self, other)


@pytest.fixture(autouse=True)
def _zero_counts() -> None:
    _Str.compared = _Int.compared = 0


def _unchecked(axes: dict[str, Any], **top: Any) -> Matrix:
    """A matrix built without validation, so that its values stay the counting ones."""
    return Matrix.model_construct(
        campaign="c1", hosts=["laptop-80w"], matrix=MatrixAxes.model_construct(**axes), **top
    )


# -- counted before built -----------------------------------------------------------------------


def test_a_matrix_of_too_many_jobs_is_refused_before_it_is_built(tmp_path: Path) -> None:
    path = tmp_path / "matrix.yaml"
    # 200 models x 1,000 contexts: a 10 kB file asking for 200,000 jobs.
    text = _matrix_text([f"m{i}" for i in range(200)], list(range(1000, 2000)))
    path.write_text(text + "exclude:\n  - {model: m0}\n")

    tracemalloc.start()
    try:
        with pytest.raises(MatrixError) as info:
            load_matrix_file(path)
        peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()

    assert info.value.problems == [
        f"{path}:4: matrix: expands to 200,000 jobs (model 200 x context 1,000) before "
        f"exclusions, more than the {MAX_JOBS:,} one file may ask for: split it into several "
        "files (one per host or per model, say) and submit each"
    ]
    assert peak_mib < 64, peak_mib  # the file's values, not 200,000 jobs


def test_the_job_limit_counts_axes_and_includes_exactly() -> None:
    # 100 models x 1,000 contexts is exactly the limit; one include more is over it.
    at_limit = _unchecked({"model": [f"m{i}" for i in range(100)], "context": list(range(1, 1001))})
    assert too_many_jobs(at_limit) is None
    over = at_limit.model_copy(update={"include": [Selector(host="laptop-80w")]})
    assert too_many_jobs(over) == (
        ("matrix",),
        f"expands to 100,001 jobs (model 100 x context 1,000 + 1 include), more than the "
        f"{MAX_JOBS:,} one file may ask for: split it into several files (one per host or per "
        "model, say) and submit each",
    )


# -- work linear in the number of mistakes --------------------------------------------------


def test_looking_up_where_each_job_comes_from_is_not_a_search(tmp_path: Path) -> None:
    n = 2000
    matrix = _unchecked({"model": [_Str(f"m{i}") for i in range(n)], "context": [128]})
    mf = MatrixFile(tmp_path / "m.yaml", "", matrix, {}, [])

    places = [mf.where_value("model", f"m{i}") for i in range(n)]

    assert places[7] == f"{tmp_path / 'm.yaml'}:1: matrix.model[7]"
    assert mf.where_value("model", "absent") == f"{tmp_path / 'm.yaml'}:1: model"
    assert _Str.compared <= 2 * n  # a search per job would make n * n / 2


def test_contexts_too_small_are_placed_without_a_search() -> None:
    n = 2000
    matrix = _unchecked(
        {"model": ["m"], "context": [_Int(c) for c in range(1, n + 1)]},
        workload=Workload(prompt_tokens=16, gen_tokens=n + 100),
    )

    problems = row_problems(matrix, rows(matrix))

    assert len(problems) == n
    assert problems[5] == (("matrix", "context", 5), f"context 6 is smaller than prompt_tokens "
                           f"+ gen_tokens = {n + 116}")  # fmt: skip
    assert _Int.compared <= 2 * n


def test_exclusions_are_looked_up_not_compared_with_every_row() -> None:
    n = 2000
    models = [_Str(f"m{i}") for i in range(n)]
    matrix = _unchecked(
        {"model": models, "context": [128]},
        exclude=[Selector(model=f"m{i}") for i in range(0, n, 2)],  # every other model
    )

    kept = rows(matrix)

    assert [row["model"] for row in kept] == models[1::2]
    assert _Str.compared <= 2 * n  # rows x exclusions would make n * n / 2


def test_thousands_of_unknown_names_make_short_messages_and_a_count(tmp_path: Path) -> None:
    n = 1000
    defined = "".join(f"  w{i}: {{gen_tokens: 8}}\n" for i in range(n))
    text = _matrix_text(["m"], [128]).replace(
        "workload: {prompt_tokens: 16, gen_tokens: 8}\n", f"workloads:\n{defined}"
    )
    path = tmp_path / "matrix.yaml"
    path.write_text(text + f"  workload: {_axis([f'typo{i}' for i in range(n)])}\n")

    with pytest.raises(MatrixError) as info:
        load_matrix_file(path)

    shown = info.value.problems
    # Each message lists a bounded number of names, not all n (n messages x n names).
    assert max(len(line) for line in shown) < 400
    assert shown[0] == (
        f"{path}:{n + 8}: matrix.workload[0]: unknown workload 'typo0' (defined: w0, w1, w10, "
        "w100, w101, w102, w103, w104, w105, w106, w107, w108, w109, w11, w110, w111, w112, "
        "w113, w114, w115 and 980 more)"
    )
    assert (
        shown[-1]
        == f"... and {n - MAX_PROBLEMS_SHOWN:,} more problems ({n:,} in all): fix these and retry"
    )
    assert info.value.total == n and len(shown) == MAX_PROBLEMS_SHOWN + 1


def test_submit_reports_the_first_unknown_models_and_counts_the_rest(tmp_path: Path) -> None:
    n = 300
    path = tmp_path / "matrix.yaml"
    path.write_text(_matrix_text([f"m{i}" for i in range(n)], [128]))
    mf = load_matrix_file(path)
    inventory = WorkerInventory(
        host="laptop-80w", queue="orch.laptop-80w.default", engines={"llama-bench": ["cpu"]},
        models=["tiny:q8_0"], version="t", instance_id="i", pid=1, started_at=0, last_seen=0,
    )  # fmt: skip

    problems = check_against_fleet(mf, mf.jobs, Fleet(inventories={"laptop-80w": inventory}))
    error = SubmitError(problems)

    assert len(problems) == n
    assert error.problems[:2] == [
        f"{path}:5: matrix.model[0]: host laptop-80w has no model 'm0' (it has: tiny:q8_0)",
        f"{path}:5: matrix.model[1]: host laptop-80w has no model 'm1' (it has: tiny:q8_0)",
    ]
    assert error.problems[MAX_PROBLEMS_SHOWN:] == [
        f"... and {n - MAX_PROBLEMS_SHOWN} more problems ({n} in all): fix these and retry"
    ]


# -- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            _matrix_text([f"m{i}" for i in range(400)], list(range(1000, 1500))),
            ":4: matrix: expands to 200,000 jobs (model 400 x context 500), more than",
        ),
        (
            _matrix_text(["m"], [128])
            + "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
                for p, c in zip("abcdefgh", "bcdefghi", strict=True)
            ),
            ":13: more than 200,000 values once aliases are expanded",
        ),
        (
            _matrix_text(["m"], [128]) + "campaign: c2\n",
            ":8: duplicate key 'campaign' (first at line 1)",
        ),
        (b"\xff\xd8\xff\xe0 JFIF", ":1: not UTF-8 text (byte 0xff)"),
    ],
    ids=["too-many-jobs", "alias-bomb", "duplicate-key", "binary"],
)
def test_orch_plan_refuses_a_hostile_matrix_with_a_message(
    tmp_path: Path, text: str | bytes, expected: str
) -> None:
    path = tmp_path / "matrix.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)

    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--store", str(tmp_path / "o.db"), "plan",
         str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip

    assert done.returncode == 2, done.stderr
    assert f"error: {path}{expected}" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
