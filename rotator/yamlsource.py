"""Reading YAML with line numbers, duplicate-key detection and ${VAR} expansion.

PyYAML silently keeps the last of two equal keys; an ops file with a
duplicated secret must be refused instead. This module composes the node
tree itself so every value keeps the line it came from.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[str | int, ...]
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class SourceDocument:
    """Plain data from a YAML file, the line of each key path, and what went wrong."""

    path: Path
    data: Any = None
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line_of(self, loc: Loc) -> int:
        """The line of `loc`, or of its nearest parent that has one."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return 1

    def problem(self, loc: Loc, message: str) -> None:
        dotted = ".".join(str(part) for part in loc) or "(top)"
        self.problems.append(f"{self.path}:{self.line_of(loc)}: {dotted}: {message}")


def load_yaml(path: Path, environ: dict[str, str] | None = None) -> SourceDocument:
    """Compose `path` into plain data, recording lines and problems instead of raising."""
    doc = SourceDocument(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        doc.problems.append(f"{path}: cannot read: {exc.strerror}")
        return doc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        doc.problems.append(f"{path}:{line}: invalid YAML: {exc.problem or exc.context}")
        return doc
    if node is None:
        doc.problems.append(f"{path}:1: the file is empty (expected a mapping with `secrets:`)")
        return doc
    doc.data = _Builder(doc, os.environ if environ is None else environ).build(node, ())
    return doc


class _Builder:
    def __init__(self, doc: SourceDocument, environ: Any) -> None:
        self.doc = doc
        self.environ = environ
        self.constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.doc.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, index)) for index, item in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
            return self._expand(str(node.value), loc)
        return self.constructor.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(self.constructor.construct_object(key_node, deep=True))
            line = key_node.start_mark.line + 1
            if key in first_line:
                self.doc.problems.append(
                    f"{self.doc.path}:{line}: {'.'.join(map(str, (*loc, key)))}: duplicate key "
                    f"(first defined on line {first_line[key]}; keep one)"
                )
                continue
            first_line[key] = line
            self.doc.lines[(*loc, key)] = line
            result[key] = self.build(value_node, (*loc, key))
        return result

    def _expand(self, text: str, loc: Loc) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = self.environ.get(name)
            if value is None:
                if default is not None:
                    return default
                self.doc.problem(
                    loc,
                    f"environment variable {name} is not set "
                    f"(set it, or write ${{{name}:-default}})",
                )
                return ""
            return str(value)

        return _VAR.sub(replace, text)
