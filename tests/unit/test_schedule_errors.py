"""An invalid schedules.yaml is refused whole, every problem located as FILE:LINE: key: message.

Each file under tests/data/schedules/invalid/ is one case. Its first lines say what the loader
must report, one problem per line:

    # expect: LINE KEY.PATH | substring of the message

KEY.PATH is `-` for problems with the file as a whole (syntax, encoding, empty). The loader must
report exactly the expected problems: no traceback, no cascade of follow-on noise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from rotator.errors import ConfigError
from rotator.schedule import load_plan

DATA = Path(__file__).parents[1] / "data" / "schedules"
CORPUS = sorted((DATA / "invalid").glob("*.yaml"))
_EXPECT = re.compile(r"^# expect: (\d+) (\S+) \| (.+)$")
_FORMAT = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<rest>.+)$")


@dataclass(frozen=True)
class Expected:
    line: int
    key: str
    text: str

    def prefix(self, path: Path) -> str:
        return f"{path}:{self.line}: " + ("" if self.key == "-" else f"{self.key}: ")


def expectations(path: Path) -> list[Expected]:
    """The `# expect:` lines at the top of a corpus file (read leniently: some are not UTF-8)."""
    found = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        match = _EXPECT.match(line)
        if match is None:
            break
        found.append(Expected(int(match[1]), match[2], match[3].strip()))
    return found


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_plan(path, environ={} if environ is None else environ)
    return info.value.problems


def test_the_corpus_covers_many_cases() -> None:
    """Guard against the glob silently finding nothing."""
    assert len(CORPUS) >= 50


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: path.stem)
def test_invalid_file_reports_each_problem_at_its_line_and_key(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} has no `# expect:` line"
    problems = problems_of(path)
    assert len(problems) == len(expected), "\n".join(problems)
    for want in expected:
        assert any(
            problem.startswith(want.prefix(path)) and want.text in problem for problem in problems
        ), f"no problem starts with {want.prefix(path)!r} and says {want.text!r}:\n" + "\n".join(
            problems
        )


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: path.stem)
def test_every_problem_names_the_file_and_a_line(path: Path) -> None:
    for problem in problems_of(path):
        match = _FORMAT.match(problem)
        assert match is not None, problem
        assert match["file"] == str(path)
        assert int(match["line"]) >= 1


def test_all_problems_are_listed_in_file_order() -> None:
    path = DATA / "many-problems.yaml"
    expected = expectations(path)
    problems = problems_of(path)
    assert [p.split(": ", 2)[:2] for p in problems] == [
        [f"{path}:{want.line}", want.key] for want in expected
    ]
    for want, problem in zip(expected, problems, strict=True):
        assert want.text in problem


def test_the_error_message_counts_and_lists_the_problems() -> None:
    path = DATA / "many-problems.yaml"
    with pytest.raises(ConfigError) as info:
        load_plan(path, environ={})
    count = len(expectations(path))
    text = str(info.value)
    assert text.splitlines()[0] == f"{path}: {count} problems; nothing was loaded"
    assert text.splitlines()[1:] == info.value.problems
    assert "Traceback" not in text


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "schedules.yaml"
    with pytest.raises(ConfigError) as info:
        load_plan(path, environ={})
    assert info.value.problems == [f"{path}: cannot read: No such file or directory"]


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_plan(tmp_path, environ={})
    assert info.value.problems[0].startswith(f"{tmp_path}: cannot read: ")


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "schedules.yaml"
    path.write_bytes(b"stores:\n  local: {type: embedded}\nsecrets:\n  caf\xe9: {}\n")
    assert problems_of(path) == [
        f"{path}:4: cannot read: the file is not UTF-8 text (save it as UTF-8)"
    ]


def test_a_control_character_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "schedules.yaml"
    path.write_text("stores:\n  local: {type: embedded}\nsecrets:\n  billing\x07db: {}\n")
    assert problems_of(path) == [
        f"{path}:4: invalid YAML: control character U+0007 is not allowed (remove it)"
    ]


def test_a_deeply_nested_file_is_refused_not_crashed(tmp_path: Path) -> None:
    path = tmp_path / "schedules.yaml"
    path.write_text("secrets: " + "[" * 5000 + "]" * 5000 + "\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:1: ")
    assert "nests too deeply" in problem


def test_an_unset_variable_is_reported_once_per_use(tmp_path: Path) -> None:
    """The empty value left behind does not add a second 'too short' problem."""
    path = tmp_path / "schedules.yaml"
    path.write_text(
        "stores: {local: {type: embedded}}\n"
        "secrets:\n"
        "  a: {rotator: postgres-password, store: local, every: 1d,\n"
        "      target: {host: '${DBHOST}', username: a}}\n"
        "  b: {rotator: postgres-password, store: local, every: 1d,\n"
        "      target: {host: '${DBHOST}', username: b}}\n"
    )
    problems = problems_of(path)
    assert problems == [
        f"{path}:4: secrets.a.target.host: environment variable DBHOST is not set "
        "(set it, or write ${DBHOST:-default})",
        f"{path}:6: secrets.b.target.host: environment variable DBHOST is not set "
        "(set it, or write ${DBHOST:-default})",
    ]
