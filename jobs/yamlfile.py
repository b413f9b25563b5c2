"""YAML files whose errors name file, line and key: the matrix file, the fleet inventory and
worker.yaml (both sides of the wall read YAML an owner or a stranger wrote).

Example::

    text = read_text(path, MatrixError)                  # too big, not UTF-8 -> MatrixError
    data, lines = parse_yaml(path, text, MatrixError)   # invalid YAML -> MatrixError([...])
    model = Matrix.model_validate(data)                  # ValidationError ->
    describe(path, exc, lines)                           # ["m.yaml:7: matrix.context[1]: ..."]

Reading is bounded, because a matrix file may come from anywhere: at most `MAX_FILE_BYTES`,
`MAX_NODES` values once every alias is expanded (counted while composing, so an alias bomb is
refused before anything expands it) and `MAX_DEPTH` levels of nesting. A key given twice in one
mapping is refused with both lines instead of the last one silently winning.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

KeyPath = tuple[str | int, ...]

# Real matrix and fleet files are a few kilobytes. A file at these bounds costs at most about
# 150 MB and several seconds of pure-Python parsing (PyYAML keeps ~600 bytes per node); more is
# an accident or an attack.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_NODES = 200_000  # keys, values and list entries, each use of an alias counted in full
MAX_DEPTH = 32  # nested mappings and lists; keeps parsing far from Python's recursion limit

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
    """The file's text: at most `MAX_FILE_BYTES`, UTF-8; anything else raises `error`."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)  # never more, whatever the file is (/dev/zero)
    except OSError as exc:
        raise error([f"{path}: cannot read: {exc.strerror}"]) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise error(
            [f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB, the most orch reads from a "
             "YAML file: split it into several files"]
        )  # fmt: skip
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise error(
            [f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}): is this the right "
             "file? Save it as UTF-8"]
        ) from None  # fmt: skip


def parse_yaml(
    path: Path, text: str, error: Callable[[list[str]], Exception]
) -> tuple[Any, dict[KeyPath, int]]:
    """The data in `text` and a key path -> line map; invalid YAML, a duplicate key or a file
    beyond the bounds raises `error([message, ...])`."""
    lines: dict[KeyPath, int] = {}
    try:
        loader = _BoundedLoader(text)  # checks every character: raises ReaderError
        node = loader.get_single_node()
        if loader.duplicates:
            # Inner mappings finish composing first: report in the order of the file.
            found = sorted(loader.duplicates, key=lambda message: int(message.split(":")[0]))
            raise error([f"{path}:{message}" for message in found])
        if node is None:
            return None, lines
        # Indexed before constructing: merge keys (`<<: *base`) rewrite the node tree.
        _index_lines(node, (), lines)
        return loader.construct_document(node), lines
    except _Refused as exc:
        raise error([f"{path}:{exc.line}: {exc.message}"]) from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        message = f"{path}:{line}: invalid YAML: {exc.problem}"
        if exc.context and exc.context_mark and exc.context_mark.line + 1 != line:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise error([message]) from exc
    except yaml.reader.ReaderError as exc:  # a control character: binary data, most likely
        line = text.count("\n", 0, exc.position) + 1
        raise error(
            [f"{path}:{line}: not a text file: character #x{exc.character:04x} is not allowed "
             "in YAML"]
        ) from None  # fmt: skip
    except yaml.YAMLError as exc:
        raise error([f"{path}: invalid YAML: {exc}"]) from exc


def describe(path: Path, exc: ValidationError, lines: dict[KeyPath, int]) -> list[str]:
    """One `file:line: key: problem` per validation error."""
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "greater_than" and any(str(part).endswith("_w") for part in loc):
            message = "expected a positive number of watts"
        elif err["type"] == "less_than_equal" and "le" in err.get("ctx", {}):
            message = f"at most {err['ctx']['le']}"
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


class _Refused(Exception):
    """The file is beyond a bound; `line` is where that became clear."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting as it composes: nodes (an alias counts as everything its
    anchor holds, without expanding it), nesting depth, and keys given twice."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.duplicates: list[str] = []  # "line: duplicate key ..." (the caller adds the file)
        self._nodes = 0
        self._depth = 0
        self._sizes: dict[str, int] = {}  # anchor -> nodes under it, once it is complete

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            anchor = str(event.anchor)
            if anchor in self.anchors and anchor not in self._sizes:
                raise _Refused(line, f"alias *{anchor} refers to a value that contains it")
            self._count(self._sizes.get(anchor, 0), line)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(line, f"nested deeper than {MAX_DEPTH} levels")
        before = self._nodes
        self._count(1, line)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if event.anchor is not None:
            self._sizes[str(event.anchor)] = self._nodes - before
        if isinstance(node, yaml.MappingNode):
            self._note_duplicates(node)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # A value whose tag or form promises a type it is not (`2020-13-45`, `!!int x`) makes
        # the constructors raise plain Python errors: give them the value's line.
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {exc}", node.start_mark
            ) from exc

    def _count(self, nodes: int, line: int) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise _Refused(
                line,
                f"more than {MAX_NODES:,} values once aliases are expanded, the most orch "
                "reads from a YAML file: split it into several files",
            )

    def _note_duplicates(self, node: yaml.MappingNode) -> None:
        first: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue  # a complex key is refused by validation; `<<` may merge twice
            line, ident = key.start_mark.line + 1, (key.tag, key.value)
            if ident in first:
                self.duplicates.append(
                    f"{line}: duplicate key {key.value!r} (first at line {first[ident]})"
                )
            else:
                first[ident] = line
