"""Credential: a mapping whose repr, str and formatting never show a confidential value."""

from __future__ import annotations

import copy
import logging
import pickle

import pytest

from rotator.credential import Credential

PASSWORD = "s3cr3t-Pa55word!"


def make() -> Credential:
    return Credential(
        engine="postgres",
        host="db.internal",
        port=5432,
        dbname="billing",
        username="billing_app",
        password=PASSWORD,
    )


@pytest.mark.parametrize(
    "render",
    [
        repr,
        str,
        format,
        lambda c: f"{c}",
        lambda c: f"{c!r}",
        lambda c: f"{c!s}",
        lambda c: "%s" % (c,),  # noqa: UP031 - the old formatting styles are what is tested
        lambda c: "%r" % (c,),  # noqa: UP031
        lambda c: "{}".format(c),  # noqa: UP032
        lambda c: str([c]),
        lambda c: str({"credential": c}),
    ],
    ids=[
        "repr",
        "str",
        "format",
        "fstring",
        "fstring_r",
        "fstring_s",
        "percent_s",
        "percent_r",
        "str_format",
        "in_list",
        "in_dict",
    ],
)
def test_rendering_never_shows_the_password(render: object) -> None:
    assert callable(render)
    text = render(make())
    assert PASSWORD not in text
    assert "***" in text
    assert "billing_app" in text


def test_a_format_spec_is_refused_rather_than_showing_values() -> None:
    with pytest.raises(TypeError):
        f"{make():>80}"


def test_logging_never_shows_the_password(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("rotated %s", make())
        logging.getLogger("test").info("rotated %r", make())
    assert PASSWORD not in caplog.text


def test_an_exception_message_never_shows_the_password() -> None:
    error = RuntimeError("failed for", make())
    assert PASSWORD not in str(error)
    assert PASSWORD not in repr(error)


def test_every_non_public_field_is_masked() -> None:
    credential = Credential(username="u", api_key="k" * 20, token="t" * 20, note="private")
    text = repr(credential)
    assert "k" * 20 not in text and "t" * 20 not in text and "private" not in text


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_is_refused(protocol: int) -> None:
    with pytest.raises(TypeError, match="never serialised implicitly"):
        pickle.dumps(make(), protocol=protocol)


def test_copies_are_the_same_immutable_value() -> None:
    credential = make()
    assert copy.copy(credential) is credential
    assert copy.deepcopy({"c": credential})["c"] is credential


def test_public_keeps_only_non_confidential_fields() -> None:
    assert make().public() == {
        "engine": "postgres",
        "host": "db.internal",
        "port": 5432,
        "dbname": "billing",
        "username": "billing_app",
    }
    assert Credential(password=PASSWORD, api_key="x").public() == {}


def test_values_are_there_when_asked_for_by_name() -> None:
    credential = make()
    assert credential.password == PASSWORD
    assert credential["password"] == PASSWORD
    assert credential.username == "billing_app"
    assert Credential.from_json(credential.to_json()) == credential
    assert credential.as_dict()["password"] == PASSWORD


def test_secret_values_lists_confidential_values_for_redaction() -> None:
    assert list(Credential(username="billing_app", password=PASSWORD, pin="12")) == [
        "username",
        "password",
        "pin",
    ]
    assert list(
        Credential(username="billing_app", password=PASSWORD, pin="12").secret_values()
    ) == [PASSWORD]


def test_equality_is_by_fields() -> None:
    assert make() == make()
    assert make() != make().replace(password="other-password")
    assert make() != {**make()}
    assert hash(make()) == hash(make())
    assert len({make(), make()}) == 1


def test_it_is_immutable() -> None:
    credential = make()
    with pytest.raises(AttributeError):
        credential.password = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del credential._fields
    with pytest.raises(TypeError):
        credential["password"] = "x"  # type: ignore[index]
    changed = credential.replace(password="new-password-1")
    assert changed.password == "new-password-1" and credential.password == PASSWORD


def test_constructor_merges_a_mapping_and_keywords() -> None:
    assert Credential({"username": "a", "password": "b"}, password="c") == Credential(
        username="a", password="c"
    )


def test_from_json_refuses_anything_but_an_object() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        Credential.from_json("[1, 2]")
