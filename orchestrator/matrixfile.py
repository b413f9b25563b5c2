"""Read a matrix YAML file and expand it into jobs, with errors that name file, line and key.

Example::

    mf = load_matrix_file(Path("matrix.yaml"))   # MatrixError lists every problem
    mf.jobs
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from jobs.matrix import HOST_SETTING_KEYS, HostConfiguration, Matrix, Selector
from jobs.spec import CONFIGURATION_AXES, RUNTIME_AXES, JobSpec
from orchestrator.errors import MatrixError
from orchestrator.yamlfile import KeyPath, describe, dotted, line_of, parse_yaml, read_text

Path_ = KeyPath


def read_matrix_text(path: Path) -> str:
    return read_text(path, MatrixError)


def load_matrix(path: Path, text: str) -> tuple[Matrix, dict[Path_, int]]:
    """Parse and validate `text` (read from `path`); return it and a key path -> line map."""
    data, lines = parse_yaml(path, text, MatrixError)
    if not isinstance(data, dict):
        raise MatrixError([f"{path}:1: expected a mapping with campaign, hosts and matrix keys"])
    try:
        return Matrix.model_validate(data), lines
    except ValidationError as exc:
        raise MatrixError(describe(path, exc, lines)) from exc


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
        candidates: list[Path_] = []
        if axis == "host":
            candidates += [("hosts", i) for i, v in enumerate(self.matrix.hosts) if v == value]
        else:
            listed = getattr(self.matrix.matrix, axis, [])
            candidates += [("matrix", axis, i) for i, v in enumerate(listed) if v == value]
        candidates += [
            ("include", i, axis)
            for i, sel in enumerate(self.matrix.include)
            if getattr(sel, axis) == value
        ]
        if axis == "engine" and self.matrix.engine == value:
            candidates.append(("engine",))
        return self.where(candidates[0] if candidates else (axis,))


def load_matrix_file(path: Path) -> MatrixFile:
    """Load, validate and expand a matrix file; every problem is reported at once."""
    text = read_matrix_text(path)
    matrix, lines = load_matrix(path, text)
    jobs = _checked_jobs(path, matrix, lines)
    return MatrixFile(path, text, matrix, lines, jobs)


def _checked_jobs(path: Path, matrix: Matrix, lines: dict[Path_, int]) -> list[JobSpec]:
    problems = (
        _workload_problems(matrix) + _selector_problems(matrix) + _configuration_problems(matrix)
    )
    jobs = expand(matrix) if not problems else []
    if not problems and not jobs:
        problems.append((("exclude",), "the exclusions remove every job: nothing would run"))
    if problems:
        raise MatrixError(
            [f"{path}:{line_of(lines, p)}: {dotted(p)}: {msg}" for p, msg in problems]
        )
    return jobs


def _workload_problems(matrix: Matrix) -> list[tuple[Path_, str]]:
    problems: list[tuple[Path_, str]] = []
    engines = set(matrix.matrix.engine or [matrix.engine])
    engines |= {e.engine for e in matrix.include if e.engine}
    without_images = sorted(engines & {"llama-bench", "llama-server"})
    if matrix.workload.image is not None and without_images:
        problems.append(
            (("workload", "image"), f"{', '.join(without_images)} cannot send an image: use "
             "lmstudio, ollama or openai for vision models")
        )  # fmt: skip
    if matrix.workload.prompt_text is not None and "llama-bench" in engines:
        problems.append(
            (("workload", "prompt_text"), "llama-bench measures synthetic prompts only: "
             "use prompt_tokens, or a server engine such as llama-server")
        )  # fmt: skip
    for i, context in enumerate(matrix.matrix.context):
        problems += _context_problems(matrix, context, ("matrix", "context", i))
    for i, entry in enumerate(matrix.include):
        if entry.context is not None:
            problems += _context_problems(matrix, entry.context, ("include", i, "context"))
    return problems


def _selector_problems(matrix: Matrix) -> list[tuple[Path_, str]]:
    problems: list[tuple[Path_, str]] = []
    for i, entry in enumerate(matrix.include):
        for key in ("host", "model", "context"):
            if getattr(entry, key) is None:
                problems.append((("include", i), f"an include entry must name `{key}`"))
        config = matrix.configurations.get(entry.configuration or "")
        by_config = config.named() if config is not None else {}
        for key in ("backend", *HOST_SETTING_KEYS, "configuration"):
            if key in by_config:
                continue
            if getattr(entry, key) is None and len(getattr(matrix.matrix, key)) > 1:
                problems.append((("include", i), f"an include entry must name `{key}`"))
    for i, entry in enumerate(matrix.exclude):
        if not entry.named():
            problems.append((("exclude", i), "an exclude entry must name at least one key"))
    return problems


def _configuration_problems(matrix: Matrix) -> list[tuple[Path_, str]]:
    """Named configurations must exist, and not fight a matrix axis over the same setting."""
    problems: list[tuple[Path_, str]] = []
    known = ", ".join(sorted(matrix.configurations)) or "none: add a `configurations:` mapping"
    named: list[tuple[Path_, str]] = [
        (("matrix", "configuration", i), n) for i, n in enumerate(matrix.matrix.configuration)
    ]
    named += [
        (("include", i, "configuration"), e.configuration)
        for i, e in enumerate(matrix.include)
        if e.configuration
    ]
    named += [
        (("exclude", i, "configuration"), e.configuration)
        for i, e in enumerate(matrix.exclude)
        if e.configuration
    ]
    for where, name in named:
        if name not in matrix.configurations:
            problems.append((where, f"unknown configuration {name!r} (defined: {known})"))
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


_ROW_KEYS = ("host", "engine", "model", "backend", "context", *HOST_SETTING_KEYS, "configuration")


def expand(matrix: Matrix) -> list[JobSpec]:
    """hosts x axes - exclude + include, in a stable order, without duplicates.

    A named configuration's settings are filled in before exclusions apply, so `exclude:
    [{vram_split: 512M}]` also removes named configurations booted in 512M.
    """
    axes = matrix.matrix
    combos = itertools.product(
        matrix.hosts,
        axes.engine or [matrix.engine],
        axes.model,
        axes.backend,
        axes.context,
        *([*getattr(axes, key)] or [None] for key in (*HOST_SETTING_KEYS, "configuration")),
    )
    rows = [_resolved(matrix, dict(zip(_ROW_KEYS, c, strict=True))) for c in combos]
    rows = [row for row in rows if not any(_matches(row, sel) for sel in matrix.exclude)]
    for entry in matrix.include:
        # Unnamed axes default to the matrix's value when it has exactly one, except where the
        # entry's named configuration sets them.
        row: dict[str, Any] = {"engine": matrix.engine, "backend": axes.backend[0]}
        named = entry.named()
        if "configuration" not in named and len(axes.configuration) == 1:
            named["configuration"] = axes.configuration[0]
        config = matrix.configurations.get(str(named.get("configuration", "")))
        set_by_config = config.named() if config is not None else {}
        for key in HOST_SETTING_KEYS:
            listed = getattr(axes, key)
            if key not in set_by_config:
                row[key] = listed[0] if len(listed) == 1 else None
        row.update(named)
        rows.append(_resolved(matrix, row))
    jobs: dict[str, JobSpec] = {}
    for row in rows:
        spec = JobSpec(
            campaign=matrix.campaign,
            host=row["host"],
            engine=row["engine"],
            model=row["model"],
            backend=row["backend"],
            context=row["context"],
            configuration={k: row[k] for k in CONFIGURATION_AXES if row.get(k) is not None},
            settings={k: row[k] for k in RUNTIME_AXES if row.get(k) is not None},
            config_name=row.get("configuration"),
            workload=matrix.workload,
            repetitions=matrix.repetitions,
            timeout_s=matrix.timeout_s,
        )
        jobs.setdefault(spec.job_id, spec)
    return list(jobs.values())


def _resolved(matrix: Matrix, row: dict[str, Any]) -> dict[str, Any]:
    """Fill in what the row's named configuration sets (an explicit value in the row wins)."""
    config = matrix.configurations.get(row.get("configuration") or "")
    if config is None:
        return row
    return {**row, **{k: v for k, v in config.named().items() if row.get(k) is None}}


def _matches(row: dict[str, Any], selector: Selector) -> bool:
    return all(row.get(key) == value for key, value in selector.named().items())


def _context_problems(matrix: Matrix, context: int, where: Path_) -> list[tuple[Path_, str]]:
    # A fixed prompt text's length in tokens is only known to the engine's tokenizer.
    prompt = 0 if matrix.workload.prompt_text else matrix.workload.prompt_tokens
    needed = prompt + matrix.workload.gen_tokens
    if context < needed:
        return [
            (
                where,
                f"context {context} is smaller than prompt_tokens + gen_tokens = {needed}",
            )
        ]
    return []
