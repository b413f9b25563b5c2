"""Read a matrix YAML file and expand it into jobs, with errors that name file, line and key.

Example::

    mf = load_matrix_file(Path("matrix.yaml"))   # MatrixError lists every problem
    mf.jobs
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from jobs.load import expand_level_lists
from jobs.matrix import HOST_SETTING_KEYS, HostConfiguration, Matrix
from jobs.spec import JobSpec
from jobs.yamlfile import KeyPath, describe, dotted, line_of, parse_yaml, read_text
from orchestrator.errors import MatrixError
from orchestrator.matrixexpand import Problem, expand, row_problems, rows, too_many_jobs

Path_ = KeyPath

# Axes whose values are names defined elsewhere in the file: axis -> the mapping defining them.
_NAMED_AXES = {"configuration": "configurations", "workload": "workloads"}
# How many defined names a message about an unknown one lists: every message carries the list,
# so a long one would make the messages grow with the product of defined and unknown names.
_NAMES_SHOWN = 20


def read_matrix_text(path: Path) -> str:
    return read_text(path, MatrixError)


def load_matrix(path: Path, text: str) -> tuple[Matrix, dict[Path_, int], list[Problem]]:
    """Parse and validate `text` (read from `path`): the matrix, a key path -> line map, and the
    names it uses but does not define. A file that does not validate raises MatrixError with
    every validation problem and every unknown name."""
    data, lines = parse_yaml(path, text, MatrixError)
    if not isinstance(data, dict):
        raise MatrixError([f"{path}:1: expected a mapping with campaign, hosts and matrix keys"])
    # A sweep written in one workload (`concurrency: [1, 2, 4]`) becomes a workload per level;
    # each level's keys keep the lines of the workload they came from.
    data, moved, sweeps = expand_level_lists(data)
    under: dict[Path_, list[tuple[Path_, int]]] = {}
    for key, n in lines.items() if moved else ():
        if key[:1] == ("workload",) or key[:1] == ("workloads",):
            under.setdefault(key[: 1 if key[0] == "workload" else 2], []).append((key, n))
    for new, old in moved.items():
        lines |= {(*new, *key[len(old) :]): n for key, n in under.get(old, [])}
    # Checked on the raw data, so that a misspelt workload name is reported together with a
    # context that does not validate, rather than after it is fixed.
    unknown = [*sweeps, *_unknown_names(data)]
    try:
        return Matrix.model_validate(data), lines, unknown
    except ValidationError as exc:
        invalid = describe(path, exc, lines) + _messages(path, lines, unknown)
        raise MatrixError(sorted(invalid, key=_line_number)) from exc


@dataclass(frozen=True)
class MatrixFile:
    """A loaded matrix file: its text, the validated matrix, its jobs, and where keys are."""

    path: Path
    text: str
    matrix: Matrix
    lines: dict[Path_, int]
    jobs: list[JobSpec]

    def where(self, loc: Path_) -> str:
        """`matrix.yaml:7: matrix.context[1]`"""
        return f"{self.path}:{line_of(self.lines, loc)}: {dotted(loc)}"

    def where_value(self, axis: str, value: object) -> str:
        """Where the matrix names `value` for `axis` (first place), for messages about it."""
        return self.where(self._first_places.get((axis, value), (axis,)))

    @cached_property
    def _first_places(self) -> dict[tuple[str, object], Path_]:
        """(axis, value) -> the first place naming it: the host list or matrix axis, then the
        include entries, then the top-level engine. Built once, because a check of every job
        asks for it (a search per job would be quadratic in a long axis)."""
        places: dict[tuple[str, object], Path_] = {}
        for i, host in enumerate(self.matrix.hosts):
            places.setdefault(("host", host), ("hosts", i))
        for axis, listed in self.matrix.matrix:
            for i, value in enumerate(listed):
                places.setdefault((axis, value), ("matrix", axis, i))
        for i, entry in enumerate(self.matrix.include):
            for axis, value in entry.named().items():
                places.setdefault((axis, value), ("include", i, axis))
        places.setdefault(("engine", self.matrix.engine), ("engine",))
        return places

    def where_workload(self, job: JobSpec, key: str) -> str:
        """Where `job`'s workload sets `key`: under its name in `workloads`, or the single one."""
        if job.workload_name is not None:
            return self.where(("workloads", job.workload_name, key))
        return self.where(("workload", key))


def load_matrix_file(path: Path) -> MatrixFile:
    """Load, validate and expand a matrix file; every problem is reported at once."""
    text = read_matrix_text(path)
    matrix, lines, unknown = load_matrix(path, text)
    jobs = _checked_jobs(path, matrix, lines, unknown)
    return MatrixFile(path, text, matrix, lines, jobs)


def _checked_jobs(
    path: Path, matrix: Matrix, lines: dict[Path_, int], unknown: list[Problem]
) -> list[JobSpec]:
    # Jobs are checked after exclusions (`exclude: [{workload: long, context: 4K}]` is how a
    # file says that a long prompt does not fit its smallest context), alongside the rest.
    problems = (
        unknown
        + _workload_problems(matrix)
        + _selector_problems(matrix)
        + _configuration_problems(matrix)
    )
    too_many = too_many_jobs(matrix)  # counted before anything is built
    if too_many is not None:
        raise MatrixError(_messages(path, lines, [*problems, too_many]))
    expanded = rows(matrix)
    problems += row_problems(matrix, expanded)
    if not problems and not expanded:
        problems.append((("exclude",), "the exclusions remove every job: nothing would run"))
    if problems:
        raise MatrixError(_messages(path, lines, problems))
    return expand(matrix)


def _messages(path: Path, lines: dict[Path_, int], problems: list[Problem]) -> list[str]:
    """`file:line: key: problem`, once each, in the order of the file's lines."""
    numbered = sorted(((line_of(lines, p), p, msg) for p, msg in problems), key=lambda n: n[0])
    return list(dict.fromkeys(f"{path}:{n}: {dotted(p)}: {msg}" for n, p, msg in numbered))


def _line_number(message: str) -> int:
    """The line of a `file:line: ...` message (the path may hold colons; the line is digits)."""
    for part in reversed(message.split(": ", 1)[0].split(":")):
        if part.isdigit():
            return int(part)
    return 0


def _unknown_names(data: dict[Any, Any]) -> list[Problem]:
    """Names of configurations and workloads the file uses but does not define. Works on the
    raw data, skipping whatever is not shaped as expected (validation says what is wrong)."""
    problems: list[Problem] = []
    for axis, defining in _NAMED_AXES.items():
        defined = data.get(defining) or {}
        if not isinstance(defined, dict):
            continue
        names = sorted(str(n) for n in defined)
        known = ", ".join(names[:_NAMES_SHOWN]) or f"none: add a `{defining}:` mapping"
        if len(names) > _NAMES_SHOWN:
            known += f" and {len(names) - _NAMES_SHOWN:,} more"
        used: list[tuple[Path_, object]] = []
        axes = data.get("matrix")
        listed = axes.get(axis) if isinstance(axes, dict) else None
        if isinstance(listed, list):
            used += [(("matrix", axis, i), name) for i, name in enumerate(listed)]
        for section in ("include", "exclude"):
            entries = data.get(section)
            for i, entry in enumerate(entries if isinstance(entries, list) else []):
                if isinstance(entry, dict) and axis in entry:
                    used.append(((section, i, axis), entry[axis]))
        problems += [
            (where, f"unknown {axis} {name!r} (defined: {known})")
            for where, name in used
            if isinstance(name, str) and name not in defined
        ]
    return problems


def _workload_problems(matrix: Matrix) -> list[Problem]:
    if "workload" in matrix.model_fields_set and matrix.matrix.workload:
        return [
            (("workload",), "the matrix has a `workload` axis: name this workload under "
             "`workloads:` and list it there, or drop the axis")
        ]  # fmt: skip
    return []


def _selector_problems(matrix: Matrix) -> list[Problem]:
    problems: list[Problem] = []
    for i, entry in enumerate(matrix.include):
        for key in ("host", "model", "context"):
            if getattr(entry, key) is None:
                problems.append((("include", i), f"an include entry must name `{key}`"))
        config = matrix.configurations.get(entry.configuration or "")
        by_config = config.named() if config is not None else {}
        for key in ("backend", *HOST_SETTING_KEYS, "configuration", "workload"):
            if key in by_config:
                continue
            if getattr(entry, key) is None and len(getattr(matrix.matrix, key)) > 1:
                problems.append((("include", i), f"an include entry must name `{key}`"))
    for i, entry in enumerate(matrix.exclude):
        if not entry.named():
            problems.append((("exclude", i), "an exclude entry must name at least one key"))
    return problems


def _configuration_problems(matrix: Matrix) -> list[Problem]:
    """Named configurations must not fight a matrix axis or an include over the same setting
    (unknown names are `_unknown_names`')."""
    problems: list[Problem] = []
    for i, entry in enumerate(matrix.include):
        config = matrix.configurations.get(entry.configuration or "")
        for key in config.named() if config is not None else {}:
            if getattr(entry, key) is not None:
                problems.append(
                    (("include", i, key), f"{key} is set both here and by configuration "
                     f"{entry.configuration!r}: keep it in one place")
                )  # fmt: skip
    for name in matrix.matrix.configuration:
        for key in matrix.configurations.get(name, HostConfiguration()).named():
            if getattr(matrix.matrix, key):
                problems.append(
                    (("matrix", key), f"{key} is set both here and by configuration {name!r}: "
                     "keep it in one place")
                )  # fmt: skip
    return problems
