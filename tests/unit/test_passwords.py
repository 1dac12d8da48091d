"""Passwords from the `password:` policy: length, excluded characters, each class present."""

from __future__ import annotations

import string

import pytest
from pydantic import ValidationError

from rotator.passwords import PasswordPolicy, generate_password

SAMPLES = 200


def test_defaults() -> None:
    policy = PasswordPolicy()
    assert policy.length == 32
    assert policy.exclude_characters == ":/@\"'\\`"
    assert policy.require_each_type is True


@pytest.mark.parametrize("length", [12, 32, 100, 256])
def test_length_is_exact(length: int) -> None:
    policy = PasswordPolicy(length=length)
    assert all(len(generate_password(policy)) == length for _ in range(20))


@pytest.mark.parametrize("length", [0, 11, 257])
def test_length_outside_12_to_256_is_refused(length: int) -> None:
    with pytest.raises(ValidationError):
        PasswordPolicy(length=length)


def test_excluded_characters_never_appear() -> None:
    excluded = "abcdefghijklmnopqrstuvwxyz0123456789" + string.punctuation.replace("_", "")
    policy = PasswordPolicy(length=64, exclude_characters=excluded)
    for _ in range(SAMPLES):
        password = generate_password(policy)
        assert not set(password) & set(excluded)
    assert set(policy.alphabet()) == set(string.ascii_uppercase + "_")


def test_default_exclusions_never_appear() -> None:
    policy = PasswordPolicy()
    for _ in range(SAMPLES):
        assert not set(generate_password(policy)) & set(policy.exclude_characters)


@pytest.mark.parametrize("length", [12, 32])
def test_each_class_is_present_when_required(length: int) -> None:
    policy = PasswordPolicy(length=length, require_each_type=True)
    classes = policy.classes()
    assert len(classes) == 4
    for _ in range(SAMPLES):
        password = generate_password(policy)
        assert all(set(password) & set(chars) for chars in classes), password


def test_a_class_reduced_to_one_character_still_appears() -> None:
    policy = PasswordPolicy(length=12, exclude_characters=string.punctuation.replace("!", ""))
    for _ in range(50):
        assert "!" in generate_password(policy)


def test_a_fully_excluded_class_is_not_required() -> None:
    policy = PasswordPolicy(length=16, exclude_characters=string.punctuation)
    assert len(policy.classes()) == 3
    for _ in range(50):
        assert generate_password(policy).isalnum()


def test_classes_are_optional_when_not_required() -> None:
    policy = PasswordPolicy(length=12, exclude_characters="", require_each_type=False)
    assert set(policy.alphabet()) == set(string.ascii_letters + string.digits + string.punctuation)
    assert len(generate_password(policy)) == 12


def test_a_policy_that_excludes_everything_is_refused() -> None:
    every = string.ascii_letters + string.digits + string.punctuation
    with pytest.raises(ValidationError, match="leaves no characters"):
        PasswordPolicy(exclude_characters=every)


def test_unknown_policy_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="extra"):
        PasswordPolicy.model_validate({"min_length": 20})


def test_passwords_differ() -> None:
    policy = PasswordPolicy()
    assert len({generate_password(policy) for _ in range(100)}) == 100
