"""Reading YAML with line numbers, duplicate-key detection and ${VAR} expansion.

PyYAML silently keeps the last of two equal keys; an ops file with a
duplicated secret must be refused instead. This module composes the node
tree itself so every value keeps the line it came from, and turns every
way a file can be unreadable (missing, not UTF-8, bad syntax, odd tags,
recursive aliases) into a problem line instead of an exception. It reads at
most MAX_FILE_BYTES, and only from a regular file, and builds at most
MAX_VALUES values, so nested aliases ("billion laughs") cannot make it run
for minutes or fill memory. `report_errors` words a pydantic
ValidationError the same way.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

Loc = tuple[str | int, ...]
#: The largest schedules file read; a hand-written one is a few kilobytes.
MAX_FILE_BYTES = 10 * 1024 * 1024
#: The most values (and merged keys) built from one file, counting each alias expansion.
MAX_VALUES = 100_000
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
#: Tags a schedules file may use: plain YAML values, nothing that builds objects.
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}"
    for name in ("str", "int", "float", "bool", "null", "timestamp", "map", "seq")
)


@dataclass
class SourceDocument:
    """Plain data from a YAML file, the line of each key path, and what went wrong."""

    path: Path
    data: Any = None
    lines: dict[Loc, int] = field(default_factory=dict)
    #: Key paths whose value could not be read and was replaced (by None or "").
    replaced: set[Loc] = field(default_factory=set)
    _found: list[tuple[int, str]] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Every problem once, in file order (line by line, then as found)."""
        seen: set[str] = set()
        ordered = []
        for _, text in sorted(self._found, key=lambda item: item[0]):
            if text not in seen:
                seen.add(text)
                ordered.append(text)
        return ordered

    def line_of(self, loc: Loc) -> int:
        """The line of `loc`, or of its nearest parent that has one."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return 1

    def problem(self, loc: Loc, message: str, line: int | None = None) -> None:
        """Record `FILE:LINE: key.path: message`; the line defaults to that of `loc`."""
        dotted = ".".join(str(part) for part in loc) or "(top)"
        line = self.line_of(loc) if line is None else line
        self._found.append((line, f"{self.path}:{line}: {dotted}: {message}"))

    def explained(self, loc: Loc) -> bool:
        """True when a replaced value at, above or below `loc` already has a problem."""
        return any(loc[: len(done)] == done or done[: len(loc)] == loc for done in self.replaced)

    def file_problem(self, line: int | None, message: str) -> None:
        """A problem with the file as a whole (unreadable, not YAML)."""
        where = f"{self.path}" if line is None else f"{self.path}:{line}"
        self._found.append((line or 0, f"{where}: {message}"))


def load_yaml(path: Path, environ: Mapping[str, str] | None = None) -> SourceDocument:
    """Compose `path` into plain data, recording lines and problems instead of raising."""
    doc = SourceDocument(path)
    text = _read(doc)
    if text is None:
        return doc
    try:
        node = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "cannot parse"
        doc.file_problem(mark.line + 1 if mark else 1, f"invalid YAML: {what}")
        return doc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        doc.file_problem(
            line,
            f"invalid YAML: control character U+{exc.character:04X} is not allowed (remove it)",
        )
        return doc
    except RecursionError:
        doc.file_problem(1, "invalid YAML: the file nests too deeply")
        return doc
    except yaml.YAMLError as exc:  # pragma: no cover - the two above cover PyYAML's errors
        doc.file_problem(1, f"invalid YAML: {exc}")
        return doc
    if node is None:
        doc.file_problem(1, "the file is empty (expected a mapping with `secrets:`)")
        return doc
    try:
        doc.data = _Builder(doc, os.environ if environ is None else environ).build(node, ())
    except RecursionError:
        doc.file_problem(1, "the file nests too deeply (expected a few levels of keys)")
        doc.data = None
    except _TooManyValues:
        # What was found while expanding is noise (one problem per copy): report the cap alone.
        doc._found.clear()
        doc.lines.clear()
        doc.replaced.clear()
        doc.file_problem(
            1,
            f"too many values: aliases expand to more than {MAX_VALUES} "
            "(expected a plain schedule file)",
        )
        doc.data = None
    return doc


#: libyaml's composer, several times faster on a large file, when PyYAML was built with it.
_FAST_LOADER: type[Any] | None = getattr(yaml, "CSafeLoader", None)


def _compose(text: str) -> yaml.Node | None:
    """The node tree of `text`; a file libyaml refuses is composed again by the Python loader,
    whose error messages (and marks) are the ones reported."""
    if _FAST_LOADER is not None:
        try:
            return yaml.compose(text, Loader=_FAST_LOADER)
        except (yaml.YAMLError, RecursionError):
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int) -> str | None:
    """Why a file of `mode` is not read, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "something else")
    return f"not a regular file but {kind} (expected a YAML file)"


def _size(count: int) -> str:
    mib = 1024 * 1024
    return f"{count // mib} MiB" if count % mib == 0 else f"{count} bytes"


def _read_bytes(path: Path) -> bytes | str:
    """The file's bytes, or why it is not read: never more than MAX_FILE_BYTES + 1 bytes.

    The type is checked before opening (opening a device can have effects of its own) and
    again on the open file; O_NONBLOCK keeps a FIFO swapped in between from blocking open().
    """
    refused = _not_regular(os.stat(path).st_mode)
    if refused:
        return refused
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    with open(os.open(path, flags), "rb") as f:
        info = os.fstat(f.fileno())
        refused = _not_regular(info.st_mode)
        if refused:
            return refused
        cap = MAX_FILE_BYTES
        if info.st_size > cap:
            return f"the file is {info.st_size} bytes (expected at most {_size(cap)})"
        raw = f.read(cap + 1)
    if len(raw) > cap:  # it grew after fstat
        return f"the file is more than {cap} bytes (expected at most {_size(cap)})"
    return raw


def _read(doc: SourceDocument) -> str | None:
    try:
        raw = _read_bytes(doc.path)
    except OSError as exc:
        doc.file_problem(None, f"cannot read: {exc.strerror or exc}")
        return None
    if isinstance(raw, str):
        doc.file_problem(None, f"cannot read: {raw}")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        doc.file_problem(line, "cannot read: the file is not UTF-8 text (save it as UTF-8)")
        return None


class _TooManyValues(Exception):
    """Building went past MAX_VALUES: aliases multiply the file."""


class _Builder:
    """Turns a composed node tree into dicts, lists and scalars, noting each key's line.

    An alias is the very node its anchor names, so it is built again at each reference;
    `spent` counts every build (and every merged key looked at) to bound that.
    """

    def __init__(self, doc: SourceDocument, environ: Mapping[str, str]) -> None:
        self.doc = doc
        self.environ = environ
        self.constructor = yaml.SafeLoader("")
        self.active: set[int] = set()
        self.spent = 0

    def _spend(self) -> None:
        self.spent += 1
        if self.spent > MAX_VALUES:
            raise _TooManyValues

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self._spend()
        self.doc.lines.setdefault(loc, node.start_mark.line + 1)
        if id(node) in self.active:
            return self._unreadable(loc, "an alias refers to itself (expected a finite value)")
        if node.tag not in _PLAIN_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            return self._unreadable(loc, f"unsupported YAML tag {tag} (remove the tag)")
        self.active.add(id(node))
        try:
            return self._build(node, loc)
        finally:
            self.active.discard(id(node))

    def _build(self, node: yaml.Node, loc: Loc) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, index)) for index, item in enumerate(node.value)]
        if node.tag == _STR_TAG:
            return self._expand(str(node.value), loc)
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            return self._unreadable(loc, f"cannot read this value: {problem}")

    def _unreadable(self, loc: Loc, message: str) -> None:
        """Record why the value at `loc` is unusable; validation then stays quiet about it."""
        self.doc.problem(loc, message)
        self.doc.replaced.add(loc)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merges: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append((key_node, value_node))
                continue
            key = self._key(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                self.doc.problem(
                    (*loc, key),
                    f"duplicate key (first defined on line {first_line[key]}; keep one)",
                    line=line,
                )
                continue
            first_line[key] = line
            self.doc.lines[(*loc, key)] = line
            result[key] = self.build(value_node, (*loc, key))
        self._merge(merges, loc, result)
        return result

    def _merge(
        self, merges: list[tuple[yaml.Node, yaml.Node]], loc: Loc, result: dict[str, Any]
    ) -> None:
        """Add keys brought in by `<<: *anchor`; explicit keys and earlier sources win."""
        for key, key_node, value_node in self._merge_pairs(merges, loc, set()):
            if key not in result:
                self.doc.lines[(*loc, key)] = key_node.start_mark.line + 1
                result[key] = self.build(value_node, (*loc, key))

    def _merge_pairs(
        self, merges: list[tuple[yaml.Node, yaml.Node]], loc: Loc, seen: set[int]
    ) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """(key, key node, value node) of each merge source, in precedence order."""
        for merge_key, merge in merges:
            sources = merge.value if isinstance(merge, yaml.SequenceNode) else [merge]
            for source in sources:
                self._spend()
                if not isinstance(source, yaml.MappingNode):
                    self.doc.problem(
                        (*loc, "<<"),
                        "`<<` merges a mapping (expected `<<: *anchor` naming a mapping)",
                        line=merge_key.start_mark.line + 1,
                    )
                    continue
                if id(source) in seen:
                    continue
                seen.add(id(source))
                nested = []
                for key_node, value_node in source.value:
                    self._spend()
                    if key_node.tag == _MERGE_TAG:
                        nested.append((key_node, value_node))
                    else:
                        yield self._key(key_node), key_node, value_node
                yield from self._merge_pairs(nested, loc, seen)

    def _key(self, node: yaml.Node) -> str:
        if isinstance(node, yaml.ScalarNode):
            return str(node.value)
        return f"<{type(node).__name__} at line {node.start_mark.line + 1}>"

    def _expand(self, text: str, loc: Loc) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = self.environ.get(name)
            if default is not None and not value:
                return default  # as in a shell: unset or empty takes the default
            if value is None:
                self.doc.problem(
                    loc,
                    f"environment variable {name} is not set "
                    f"(set it, or write ${{{name}:-default}})",
                )
                self.doc.replaced.add(loc)
                return ""
            return str(value)

        return _VAR.sub(replace, text)


_SHOULD = re.compile(r"^(?:Input|String|Value|List|Dictionary|Object) should (?:be|have) ")


def report_errors(
    doc: SourceDocument, exc: ValidationError, base: Loc, model: type[BaseModel]
) -> None:
    """Record each pydantic error as a problem under `base`, in the loader's words."""
    for error in exc.errors():
        loc: Loc = (*base, *error["loc"])
        if doc.explained(loc):
            continue
        kind = error["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, tuple(error["loc"][:-1]))
            doc.problem(loc, "unknown key" + _key_hint(str(loc[-1]), allowed))
        elif kind == "missing":
            doc.problem(loc, "required key is missing (add it)")
        else:
            doc.problem(loc, _explain(error))


def _key_hint(key: str, allowed: list[str]) -> str:
    """` (did you mean x? expected one of: ...)` for an unknown key."""
    if not allowed:
        return ""
    close = difflib.get_close_matches(key, allowed, n=1)
    guess = f"did you mean {close[0]}? " if close else ""
    return f" ({guess}expected one of: {', '.join(allowed)})"


def _explain(error: ErrorDetails) -> str:
    """Pydantic's message as `what is wrong (what is expected)`."""
    message = str(error["msg"])
    if error["type"] == "value_error":
        return message.removeprefix("Value error, ")
    shown = _shown(error.get("input"))
    if error["type"] in ("dict_type", "model_type", "model_attributes_type"):
        return f"got {shown} (expected a mapping of keys)"
    expected = _SHOULD.sub("", message)
    if expected != message:
        return f"got {shown} (expected {expected})"
    return f"{message} (got {shown})"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys a nested model accepts at `loc`, for 'unknown key' hints."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = _unwrap(field.annotation)
        elif typing.get_origin(current) is dict:
            current = _unwrap(typing.get_args(current)[1])
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """`Model | None` -> Model, so nested hints see through optional fields."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(options) == 1:
            return options[0]
    return annotation
