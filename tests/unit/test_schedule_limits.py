"""The loader's limits: bounded reads, bounded alias expansion, store paths and name lengths.

A schedules file is small and hand-written. Anything else (a device, a pipe, a huge file, a
"billion laughs" of nested aliases) is refused quickly with one problem line, and two secrets
never share a place in a store.
"""

from __future__ import annotations

import os
import textwrap
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from rotator import schedule, yamlsource
from rotator.errors import ConfigError
from rotator.schedule import load_plan
from rotator.stores import STORE_TYPES, SecretStore, StoreConfig, store_class

DATA = Path(__file__).parents[1] / "data" / "schedules"


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_plan(path, environ={})
    return info.value.problems


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedules.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


# -- alias expansion ---------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_nested_aliases_are_refused_quickly() -> None:
    path = DATA / "nested-aliases.yaml"
    assert path.stat().st_size < 600
    started = time.perf_counter()
    problems = problems_of(path)
    elapsed = time.perf_counter() - started
    assert problems == [
        f"{path}:1: too many values: aliases expand to more than 100000 "
        "(expected a plain schedule file)"
    ]
    assert elapsed < 0.8, f"took {elapsed:.2f}s"


@pytest.mark.timeout(5)
def test_walking_merge_sources_counts_towards_the_cap(tmp_path: Path) -> None:
    """`<<:` looks at every key of every source, even those it does not build; that counts too."""
    lines = [f"x-s{i}: &s{i} {{a: 1}}" for i in range(1000)]
    lines.append("x-m: &m {<<: [" + ", ".join(f"*s{i}" for i in range(1000)) + "]}")
    lines.append("x-l1: &l1 [" + ", ".join(["*m"] * 10) + "]")
    for level in range(2, 5):
        lines.append(f"x-l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]")
    lines.append("secrets: *l4")
    path = tmp_path / "schedules.yaml"
    path.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    [problem] = problems_of(path)
    assert "too many values" in problem
    assert time.perf_counter() - started < 0.8


def test_aliases_below_the_cap_still_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(yamlsource, "MAX_VALUES", 40)
    path = write(
        tmp_path,
        """
        x-target: &target {host: db.internal, username: app}
        stores: {local: {type: embedded}}
        secrets:
          app: {rotator: postgres-password, store: local, every: 1d, target: *target}
        """,
    )
    assert load_plan(path, environ={}).secret("app").target is not None
    monkeypatch.setattr(yamlsource, "MAX_VALUES", 10)
    [problem] = problems_of(path)
    assert problem == (
        f"{path}:1: too many values: aliases expand to more than 10 "
        "(expected a plain schedule file)"
    )


def test_only_the_cap_is_reported_not_the_values_built_before_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(yamlsource, "MAX_VALUES", 1000)
    level = "[" + ", ".join(["'${UNSET}'"] * 10) + "]"
    path = write(tmp_path, "x-a: &a " + level + "\nx-b: &b [" + ", ".join(["*a"] * 200) + "]\n")
    [problem] = problems_of(path)
    assert "too many values" in problem


# -- what may be read --------------------------------------------------------------------------


@pytest.mark.timeout(5)
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "schedules.yaml"
    os.mkfifo(fifo)
    # Without the fix the loader blocks in open(); this writer then lets it read an empty file.
    writer = threading.Timer(2.0, lambda: os.close(os.open(fifo, os.O_WRONLY)))
    writer.daemon = True
    writer.start()
    try:
        problems = problems_of(fifo)
    finally:
        writer.cancel()
    assert problems == [
        f"{fifo}: cannot read: not a regular file but a FIFO (expected a YAML file)"
    ]


@pytest.mark.timeout(5)
@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_a_device_is_refused_without_reading_it() -> None:
    path = Path("/dev/zero")
    assert problems_of(path) == [
        f"{path}: cannot read: not a regular file but a character device (expected a YAML file)"
    ]


def test_a_directory_is_not_a_regular_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path) == [
        f"{tmp_path}: cannot read: not a regular file but a directory (expected a YAML file)"
    ]


def test_a_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    real = write(
        tmp_path,
        """
        stores: {local: {type: embedded}}
        secrets:
          app: {rotator: postgres-password, store: local, every: 1d,
                target: {host: db.internal, username: app}}
        """,
    )
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    assert set(load_plan(link, environ={}).secrets) == {"app"}


@pytest.mark.timeout(5)
def test_a_file_over_10_mib_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "schedules.yaml"
    with path.open("wb") as f:
        f.truncate(11 * 1024 * 1024)
    assert problems_of(path) == [
        f"{path}: cannot read: the file is 11534336 bytes (expected at most 10 MiB)"
    ]


def test_a_file_at_the_cap_is_read_and_one_byte_more_is_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = (
        "stores: {local: {type: embedded}}\n"
        "secrets:\n"
        "  app: {rotator: postgres-password, store: local, every: 1d,\n"
        "        target: {host: db.internal, username: app}}\n"
    )
    path = tmp_path / "schedules.yaml"
    path.write_text(text)
    monkeypatch.setattr(yamlsource, "MAX_FILE_BYTES", len(text))
    assert set(load_plan(path, environ={}).secrets) == {"app"}
    path.write_text(text + "\n")
    assert problems_of(path) == [
        f"{path}: cannot read: the file is {len(text) + 1} bytes "
        f"(expected at most {len(text)} bytes)"
    ]


def test_a_file_that_grows_while_read_is_cut_at_the_cap(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The size from fstat is not trusted: never more than the cap plus one byte is read."""
    path = tmp_path / "schedules.yaml"
    path.write_bytes(b"# " + b"x" * 98 + b"\n")
    monkeypatch.setattr(yamlsource, "MAX_FILE_BYTES", 50)
    real_fstat = os.fstat

    def small_fstat(fd: int) -> os.stat_result:
        real = real_fstat(fd)
        return os.stat_result((*real[:6], 10, *real[7:10]))  # claims 10 bytes

    monkeypatch.setattr(os, "fstat", small_fstat)
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: cannot read: the file is more than 50 bytes")


# -- store paths -------------------------------------------------------------------------------


def test_two_secrets_sharing_a_path_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        stores:
          local: {type: embedded}
        secrets:
          app1:
            rotator: postgres-password
            store: local
            path: shared
            every: 30d
            target: {host: db.internal, username: app1}
          app2:
            rotator: postgres-password
            store: local
            path: shared
            every: 30d
            target: {host: db.internal, username: app2}
        """,
    )
    assert problems_of(path) == [
        f"{path}:13: secrets.app2.path: store path 'shared' in store 'local' is already used by "
        "secret 'app1' (line 4); each secret needs its own path"
    ]


def test_a_path_equal_to_another_secrets_name_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        stores: {local: {type: embedded}}
        secrets:
          app1: {rotator: postgres-password, store: local, every: 30d,
                 target: {host: db.internal, username: app1}}
          app2: {rotator: postgres-password, store: local, every: 30d, path: app1,
                 target: {host: db.internal, username: app2}}
        """,
    )
    assert problems_of(path) == [
        f"{path}:5: secrets.app2.path: store path 'app1' in store 'local' is already used by "
        "secret 'app1' (line 3); each secret needs its own path"
    ]


def test_a_secret_may_name_its_own_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        stores: {local: {type: embedded}}
        secrets:
          app1: {rotator: postgres-password, store: local, every: 30d, path: app1,
                 target: {host: db.internal, username: app1}}
          app2: {rotator: postgres-password, store: local, every: 30d, path: apps/app2,
                 target: {host: db.internal, username: app2}}
        """,
    )
    plan = load_plan(path, environ={})
    assert [spec.path for spec in plan.secrets.values()] == ["app1", "apps/app2"]


class _RemoteConfig(StoreConfig):
    url: str


class _RemoteStore(SecretStore):
    store_type: ClassVar[str] = "remote"
    Config: ClassVar[type[StoreConfig]] = _RemoteConfig


def test_different_stores_may_reuse_a_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(STORE_TYPES, "remote", "unused:unused")
    monkeypatch.setattr(
        schedule,
        "store_class",
        lambda name: _RemoteStore if name == "remote" else store_class(name),
    )
    path = write(
        tmp_path,
        """
        stores:
          east: {type: remote, url: 'https://east.internal'}
          west: {type: remote, url: 'https://west.internal'}
          local: {type: embedded}
        secrets:
          a: {rotator: postgres-password, store: east, path: shared, every: 30d,
              target: {host: db.internal, username: a}}
          b: {rotator: postgres-password, store: west, path: shared, every: 30d,
              target: {host: db.internal, username: b}}
          c: {rotator: postgres-password, store: local, path: shared, every: 30d,
              target: {host: db.internal, username: c}}
        """,
    )
    plan = load_plan(path, environ={})
    assert {(spec.store, spec.path) for spec in plan.secrets.values()} == {
        ("east", "shared"),
        ("west", "shared"),
        ("local", "shared"),
    }


def test_embedded_stores_share_one_namespace(tmp_path: Path) -> None:
    """Every embedded store keeps its versions in the same table, keyed by path alone."""
    path = write(
        tmp_path,
        """
        stores: {first: {type: embedded}, second: {type: embedded}}
        secrets:
          app: {rotator: postgres-password, store: first, every: 30d,
                target: {host: db.internal, username: app1}}
          other: {rotator: postgres-password, store: second, path: app, every: 30d,
                  target: {host: db.internal, username: app2}}
        """,
    )
    assert problems_of(path) == [
        f"{path}:5: secrets.other.path: store path 'app' in store 'second' is already used by "
        "secret 'app' (line 3) in store 'first'; embedded stores share one table in the "
        "history database, so each secret needs its own path"
    ]


def test_a_null_path_is_the_secrets_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        stores: {local: {type: embedded}}
        secrets:
          app: {rotator: postgres-password, store: local, every: 30d,
                target: {host: db.internal, username: app}}
          b: {rotator: postgres-password, store: local, every: 30d, path: app,
              target: {host: db.internal, username: b}}
          app-too: {rotator: postgres-password, store: local, every: 30d, path: ~,
                    target: {host: db.internal, username: c}}
        """,
    )
    assert problems_of(path) == [
        f"{path}:5: secrets.b.path: store path 'app' in store 'local' is already used by "
        "secret 'app' (line 3); each secret needs its own path"
    ]
    path.write_text(path.read_text().replace("path: app,", "path: app-too,"))
    assert problems_of(path) == [
        f"{path}:7: secrets.app-too.path: store path 'app-too' in store 'local' is already "
        "used by secret 'b' (line 5); each secret needs its own path"
    ]


@pytest.mark.parametrize("value", ["'${APP_PATH}'", "'apps/${APP_PATH}'"])
def test_an_unset_variable_in_a_path_is_reported_once(tmp_path: Path, value: str) -> None:
    """Not again as an empty path, nor as two secrets sharing what is left of it."""
    path = write(
        tmp_path,
        f"""
        stores: {{local: {{type: embedded}}}}
        secrets:
          app: {{rotator: postgres-password, store: local, every: 30d, path: {value},
                target: {{host: db.internal, username: app}}}}
          b: {{rotator: postgres-password, store: local, every: 30d, path: {value},
              target: {{host: db.internal, username: b}}}}
        """,
    )
    problems = problems_of(path)
    assert [problem.split(": ", 2)[1] for problem in problems] == [
        "secrets.app.path",
        "secrets.b.path",
    ]
    assert all("APP_PATH is not set" in problem for problem in problems)


# -- lengths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ['""', "' '", "'\t  '"])
def test_an_empty_path_is_refused(tmp_path: Path, value: str) -> None:
    path = write(
        tmp_path,
        f"""
        stores: {{local: {{type: embedded}}}}
        secrets:
          app: {{rotator: postgres-password, store: local, every: 30d, path: {value},
                target: {{host: db.internal, username: app}}}}
        """,
    )
    assert problems_of(path) == [
        f"{path}:3: secrets.app.path: path is empty (expected a non-empty key inside the "
        "store, or leave `path` out)"
    ]


@pytest.mark.parametrize(("length", "ok"), [(512, True), (513, False)])
def test_a_path_has_at_most_512_characters(tmp_path: Path, length: int, ok: bool) -> None:
    store_path = "é" * length  # characters, not bytes: the column is VARCHAR(512)
    path = write(
        tmp_path,
        f"""
        stores: {{local: {{type: embedded}}}}
        secrets:
          app: {{rotator: postgres-password, store: local, every: 30d, path: {store_path},
                target: {{host: db.internal, username: app}}}}
        """,
    )
    if ok:
        assert load_plan(path, environ={}).secret("app").path == store_path
    else:
        assert problems_of(path) == [
            f"{path}:3: secrets.app.path: path is 513 characters long (expected at most 512)"
        ]


@pytest.mark.parametrize(("length", "ok"), [(1, True), (200, True), (201, False), (0, False)])
def test_a_secret_name_has_1_to_200_characters(tmp_path: Path, length: int, ok: bool) -> None:
    name = "n" * length
    path = write(
        tmp_path,
        f"""
        stores: {{local: {{type: embedded}}}}
        secrets:
          '{name}': {{rotator: postgres-password, store: local, every: 30d,
                target: {{host: db.internal, username: app}}}}
        """,
    )
    if ok:
        assert set(load_plan(path, environ={}).secrets) == {name}
    else:
        assert problems_of(path) == [
            f"{path}:3: secrets.{name}: secret name is {length} characters long (expected 1 to 200)"
        ]
