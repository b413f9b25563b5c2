"""YAML files whose errors name file, line and key: the matrix file and the fleet inventory.

Example::

    data, lines = parse_yaml(path, text, MatrixError)   # invalid YAML -> MatrixError([...])
    model = Matrix.model_validate(data)                  # ValidationError ->
    describe(path, exc, lines)                           # ["m.yaml:7: matrix.context[1]: ..."]
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

KeyPath = tuple[str | int, ...]

_FRIENDLY = {
    "greater_than": "expected a positive integer",
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "missing": "required key is missing",
    "too_short": "must not be empty",
    "less_than_equal": "too large",
}


def read_text(path: Path, error: Callable[[list[str]], Exception]) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise error([f"{path}: cannot read: {exc.strerror}"]) from exc


def parse_yaml(
    path: Path, text: str, error: Callable[[list[str]], Exception]
) -> tuple[Any, dict[KeyPath, int]]:
    """The data in `text` and a key path -> line map; invalid YAML raises `error([message])`."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        message = f"{path}:{line}: invalid YAML: {exc.problem}"
        if exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise error([message]) from exc
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    return data, lines


def describe(path: Path, exc: ValidationError, lines: dict[KeyPath, int]) -> list[str]:
    """One `file:line: key: problem` per validation error."""
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "greater_than" and any(str(part).endswith("_w") for part in loc):
            message = "expected a positive number of watts"
        elif err["type"] in _FRIENDLY:
            message = _FRIENDLY[err["type"]]
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
        if (
            err["type"] not in ("missing",)
            and "input" in err
            and not isinstance(err["input"], dict | list)
        ):
            message += f" (got {err['input']!r})"
        out.append(f"{path}:{line_of(lines, loc)}: {dotted(loc)}: {message}")
    return out


def dotted(loc: KeyPath) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def line_of(lines: dict[KeyPath, int], loc: KeyPath) -> int:
    """Line of the deepest known ancestor of `loc` (a missing key points at its parent)."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _index_lines(node: yaml.Node, here: KeyPath, lines: dict[KeyPath, int]) -> None:
    lines.setdefault(here, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*here, str(key_node.value))
            lines[child] = key_node.start_mark.line + 1
            _index_lines(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*here, i)] = item.start_mark.line + 1
            _index_lines(item, (*here, i), lines)
