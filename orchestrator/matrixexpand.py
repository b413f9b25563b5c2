"""Expand a validated matrix into jobs: hosts x axes, minus exclusions, plus inclusions; and
the problems only a job shows (a context too small for its workload, an engine that cannot take
its image or its gpu_layers), each pointing at the key that caused it.

Example::

    jobs = expand(matrix)                       # stable order, no duplicates
    row_problems(matrix, rows(matrix))          # [(("matrix", "context", 0), "context 64 ...")]

A matrix is counted before it is built (`too_many_jobs`): hosts x axes + includes, refused
above `MAX_JOBS`, so a file that crosses into millions of jobs costs nothing to refuse.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from jobs.engineoptions import ENGINES_TAKING, option_refusal
from jobs.load import load_refusal
from jobs.matrix import CPU_BACKEND, GPU_LAYERS_ENGINES, HOST_SETTING_KEYS, Matrix, Selector
from jobs.spec import CONFIGURATION_AXES, ENGINE_OPTIONS, RUNTIME_AXES, JobSpec, Workload
from jobs.yamlfile import KeyPath

# (where in the file, what is wrong there)
Problem = tuple[KeyPath, str]

# Axes after the first five that take one value each, or none when the matrix leaves them out.
# Order matters: a matrix without workload, gpu_layers or engine option axes expands as it did
# before.
_OPTIONAL_AXES = (*HOST_SETTING_KEYS, "configuration", "workload", "gpu_layers", *ENGINE_OPTIONS)
_ROW_KEYS = ("host", "engine", "model", "backend", "context", *_OPTIONAL_AXES)
# A row's origin: None for a combination of the matrix, i for the entry include[i].
_ORIGIN = "_origin"
_WITHOUT_IMAGES = ("llama-bench", "llama-server")
# The most jobs one matrix file may expand to. Each job is a benchmark of seconds to minutes,
# repeated: 100,000 is months of one box; and expanding costs ~2.5 kB and ~0.2 ms a job, so a
# file at the limit still loads in well under a gigabyte.
MAX_JOBS = 100_000


def too_many_jobs(matrix: Matrix) -> Problem | None:
    """The problem of a matrix that crosses into more than MAX_JOBS jobs, counted from the axis
    lengths without building any: exclusions are not subtracted (they would have to be built
    to be counted), so the count is an upper bound, and the message says so."""
    axes = matrix.matrix
    factors = [
        ("hosts", len(matrix.hosts)),
        ("engine", len(axes.engine) or 1),
        ("model", len(axes.model)),
        ("backend", len(axes.backend)),
        ("context", len(axes.context)),
        *((key, len(getattr(axes, key)) or 1) for key in _OPTIONAL_AXES),
    ]
    crossed = math.prod(n for _, n in factors)
    total = crossed + len(matrix.include)
    if total <= MAX_JOBS:
        return None
    shown = [f"{key} {n:,}" for key, n in factors if n > 1] or ["1"]
    included = len(matrix.include)
    of = " x ".join(shown)
    of += f" + {included:,} include{'' if included == 1 else 's'}" if included else ""
    before = " before exclusions" if matrix.exclude else ""
    return (
        ("matrix",),
        f"expands to {total:,} jobs ({of}){before}, more than the {MAX_JOBS:,} one file may "
        "ask for: split it into several files (one per host or per model, say) and submit each",
    )


def rows(matrix: Matrix) -> list[dict[str, Any]]:
    """Every job of the matrix as axis -> value, before named workloads and the cpu rule apply.

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
        *([*getattr(axes, key)] or [None] for key in _OPTIONAL_AXES),
    )
    excluded = _Exclusions(matrix.exclude)
    out = [_resolved(matrix, dict(zip(_ROW_KEYS, c, strict=True))) for c in combos]
    out = [row for row in out if not excluded.matches(row)]
    for i, entry in enumerate(matrix.include):
        # Unnamed axes default to the matrix's value when it has exactly one, except where the
        # entry's named configuration sets them. gpu_layers otherwise stays the engine's
        # default, and so does it for an engine without the knob.
        row: dict[str, Any] = {"engine": matrix.engine, "backend": axes.backend[0], _ORIGIN: i}
        named = entry.named()
        engine = named.get("engine", matrix.engine)
        takes = [k for k in ENGINE_OPTIONS if engine in ENGINES_TAKING[k]]
        takes += ["gpu_layers"] if engine in GPU_LAYERS_ENGINES else []
        for key in ("configuration", "workload", *takes):
            listed = getattr(axes, key)
            if key not in named and len(listed) == 1:
                named[key] = listed[0]
        config = matrix.configurations.get(str(named.get("configuration", "")))
        set_by_config = config.named() if config is not None else {}
        for key in HOST_SETTING_KEYS:
            listed = getattr(axes, key)
            if key not in set_by_config:
                row[key] = listed[0] if len(listed) == 1 else None
        row.update(named)
        out.append(_resolved(matrix, row))
    return out


def expand(matrix: Matrix) -> list[JobSpec]:
    """hosts x axes - exclude + include, in a stable order, without duplicates."""
    jobs: dict[str, JobSpec] = {}
    for row in rows(matrix):
        spec = _job(matrix, row)
        jobs.setdefault(spec.job_id, spec)
    return list(jobs.values())


def _job(matrix: Matrix, row: dict[str, Any]) -> JobSpec:
    name = row.get("workload")
    return JobSpec(
        campaign=matrix.campaign,
        host=row["host"],
        engine=row["engine"],
        model=row["model"],
        backend=row["backend"],
        context=row["context"],
        configuration={k: row[k] for k in CONFIGURATION_AXES if row.get(k) is not None},
        settings={k: row[k] for k in RUNTIME_AXES if row.get(k) is not None},
        config_name=row.get("configuration"),
        workload=_workload(matrix, name),
        workload_name=name,
        # No GPU to offload to: the cpu jobs of a gpu_layers sweep are one job, not one each.
        gpu_layers=None if row["backend"] == CPU_BACKEND else row.get("gpu_layers"),
        flash_attention=row.get("flash_attention"),
        kv_offload=None if row["backend"] == CPU_BACKEND else row.get("kv_offload"),
        think=row.get("think"),
        repetitions=matrix.repetitions,
        timeout_s=matrix.timeout_s,
    )


def _workload(matrix: Matrix, name: str | None) -> Workload:
    return matrix.workloads[name] if name is not None else matrix.workload


def row_problems(matrix: Matrix, expanded: list[dict[str, Any]]) -> list[Problem]:
    """What is wrong with the jobs themselves, once per place in the file, in file order of
    first appearance."""
    problems: list[Problem] = []
    no_images: dict[KeyPath, list[str]] = {}
    places = _Places(matrix)
    for row in expanded:
        name = row.get("workload")
        if row.get("context") is None or (name is not None and name not in matrix.workloads):
            continue  # an include entry without a context, an unknown name: reported already
        work = _workload(matrix, name)
        at: KeyPath = ("workloads", name) if name is not None else ("workload",)
        engine = row["engine"]
        if work.image is not None and engine in _WITHOUT_IMAGES:
            no_images.setdefault((*at, "image"), [])
            if engine not in no_images[(*at, "image")]:
                no_images[(*at, "image")].append(engine)
        if work.prompt_text is not None and engine == "llama-bench":
            problems.append(
                ((*at, "prompt_text"), "llama-bench measures synthetic prompts only: "
                 "use prompt_tokens, or a server engine such as llama-server")
            )  # fmt: skip
        if work.load is not None and (refusal := load_refusal(engine)) is not None:
            problems.append((at, refusal))
        problems += _context_problems(places, row, work)
        problems += _gpu_layers_problems(matrix, places, row)
        problems += _option_problems(matrix, places, row)
    problems += [
        (at, f"{', '.join(sorted(engines))} cannot send an image: use lmstudio, ollama or "
         "openai for vision models")
        for at, engines in no_images.items()
    ]  # fmt: skip
    return list(dict.fromkeys(problems))


def _context_problems(places: _Places, row: dict[str, Any], work: Workload) -> list[Problem]:
    # A fixed prompt text's length in tokens is only known to the engine's tokenizer.
    prompt = 0 if work.prompt_text else work.prompt_tokens
    needed = prompt + work.gen_tokens
    context = row["context"]
    if context >= needed:
        return []
    name = row.get("workload")
    of = f" (workload {name!r})" if name is not None else ""
    where = places.where(row, "context")
    return [(where, f"context {context} is smaller than prompt_tokens + gen_tokens = {needed}{of}")]


def _gpu_layers_problems(matrix: Matrix, places: _Places, row: dict[str, Any]) -> list[Problem]:
    layers = row.get("gpu_layers")
    if layers is None:
        return []
    origin = row.get(_ORIGIN)
    explicit = origin is not None and matrix.include[origin].gpu_layers is not None
    if row["backend"] == CPU_BACKEND:
        if explicit:
            return [(places.where(row, "gpu_layers"), "backend cpu puts no layer on a GPU: "
                     "leave gpu_layers out of this entry")]  # fmt: skip
        return []
    if row["engine"] not in GPU_LAYERS_ENGINES:
        what = f"{row['engine']} takes no gpu_layers (only {' and '.join(GPU_LAYERS_ENGINES)} "
        what += "pass llama.cpp's -ngl)"
        if explicit:
            return [(places.where(row, "gpu_layers"), f"{what}: leave it out of this entry")]
        return [
            (places.where(row, "gpu_layers"), f"{what}: exclude {{engine: {row['engine']}, "
             f"gpu_layers: {layers}}}, or set gpu_layers in include entries")
        ]  # fmt: skip
    return []


def _option_problems(matrix: Matrix, places: _Places, row: dict[str, Any]) -> list[Problem]:
    """Engine options the row's engine cannot apply (jobs/engineoptions.py), and a KV cache
    that a cpu include entry asks to place on a GPU."""
    problems: list[Problem] = []
    origin = row.get(_ORIGIN)
    for option in ENGINE_OPTIONS:
        value = row.get(option)
        if value is None:
            continue
        explicit = origin is not None and getattr(matrix.include[origin], option) is not None
        where = places.where(row, option)
        if option == "kv_offload" and row["backend"] == CPU_BACKEND:
            if explicit:
                problems.append((where, "backend cpu has no GPU for the KV cache: leave "
                                 "kv_offload out of this entry"))  # fmt: skip
            continue
        refusal = option_refusal(row["engine"], option)
        if refusal is None:
            continue
        if explicit:
            problems.append((where, f"{refusal}: leave it out of this entry"))
        else:
            exclude = f"{{engine: {row['engine']}, {option}: {str(value).lower()}}}"
            problems.append(
                (where, f"{refusal}: exclude {exclude}, or set {option} in include entries")
            )
    return problems


class _Places:
    """Where the file gave a row its value for an axis: its include entry, or the first place
    the matrix axis lists it (indexed once: a lookup per row would be quadratic)."""

    def __init__(self, matrix: Matrix) -> None:
        self._matrix = matrix
        self._first: dict[str, dict[object, int]] = {}

    def where(self, row: dict[str, Any], axis: str) -> KeyPath:
        origin = row.get(_ORIGIN)
        if origin is not None and getattr(self._matrix.include[origin], axis) is not None:
            return ("include", origin, axis)
        if axis not in self._first:
            listed = getattr(self._matrix.matrix, axis)
            self._first[axis] = {}
            for i, value in enumerate(listed):
                self._first[axis].setdefault(value, i)
        first = self._first[axis].get(row[axis])
        return ("matrix", axis) if first is None else ("matrix", axis, first)


def _resolved(matrix: Matrix, row: dict[str, Any]) -> dict[str, Any]:
    """Fill in what the row's named configuration sets (an explicit value in the row wins)."""
    config = matrix.configurations.get(row.get("configuration") or "")
    if config is None:
        return row
    return {**row, **{k: v for k, v in config.named().items() if row.get(k) is None}}


class _Exclusions:
    """Exclude entries grouped by the keys they name, each group a set of value tuples: a row
    is looked up once per group, not compared with every entry (rows x entries would be
    quadratic in a generated file)."""

    def __init__(self, selectors: Sequence[Selector]) -> None:
        self._groups: dict[tuple[str, ...], set[tuple[object, ...]]] = {}
        for selector in selectors:
            named = selector.named()
            keys = tuple(sorted(named))
            self._groups.setdefault(keys, set()).add(tuple(named[k] for k in keys))

    def matches(self, row: dict[str, Any]) -> bool:
        return any(
            tuple(row.get(k) for k in keys) in values for keys, values in self._groups.items()
        )
