"""The conformance kit's bookkeeping and detectors, without servers: which kinds are under
test, which lack a harness, and what counts as a leaked or a weak value."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

import pytest
from rotator_example.harness import TokenHarness
from rotator_example.tokens import TokenRotator

from rotator.base import RotatorRegistry
from rotator.testing import RotatorConformance
from rotator.testing_checks import estimated_bits, leaked
from rotators.postgres import PostgresPasswordRotator
from tests.conformance.builtin_harnesses import BUILTIN_HARNESSES
from tests.conformance.harness_postgres import PostgresSelfHarness

KIND = "postgres-password"


def suite(
    registry: RotatorRegistry | None, every: bool = False, harnesses: tuple[type, ...] = ()
) -> RotatorConformance:
    class Suite(RotatorConformance):
        rotators = registry
        every_kind = every

    Suite.harnesses = harnesses or (PostgresSelfHarness,)
    return Suite()


def test_every_registered_kind_has_a_harness() -> None:
    """Rotator's own kinds (and installed plugins') fail loudly here when one has none."""

    class Everything(RotatorConformance):
        harnesses = BUILTIN_HARNESSES
        every_kind = True

    Everything().test_every_kind_has_a_harness()


def test_a_kind_without_a_harness_fails_only_when_every_kind_is_asked_for() -> None:
    registry = {KIND: PostgresPasswordRotator, "orphan-a": TokenRotator, "orphan-b": TokenRotator}
    suite(registry).test_every_kind_has_a_harness()  # by default: the kinds with a harness
    with pytest.raises(pytest.fail.Exception) as failed:
        suite(registry, every=True).test_every_kind_has_a_harness()
    message = str(failed.value)
    assert "no conformance harness for rotator kind(s): orphan-a, orphan-b." in message
    assert "rotator.harnesses" in message and "harnesses" in message


def test_a_listed_kind_without_a_harness_is_a_failure() -> None:
    class Listed(RotatorConformance):
        harnesses = (PostgresSelfHarness,)
        kinds = (KIND, "orphan")
        rotators = {KIND: PostgresPasswordRotator, "orphan": TokenRotator}

    with pytest.raises(pytest.fail.Exception, match=r"kind\(s\): orphan\."):
        Listed().test_every_kind_has_a_harness()


def test_a_harness_for_an_unknown_kind_is_a_failure() -> None:
    class Stray(PostgresSelfHarness):
        kind: ClassVar[str] = "no-such-kind"

    with pytest.raises(pytest.fail.Exception, match="not a registered rotator"):
        suite(
            {KIND: PostgresPasswordRotator}, harnesses=(PostgresSelfHarness, Stray)
        ).test_every_kind_has_a_harness()


def test_the_strength_estimate_counts_only_what_varies() -> None:
    """Constant padding adds nothing; real generators' values pass."""
    padded = ["a" * 20 + secrets.token_hex(1) for _ in range(8)]
    assert estimated_bits(padded) < 20
    assert estimated_bits(["the-same-value-every-time"] * 8) == 0
    vault_like = ["A1a-" + secrets.token_urlsafe(12)[:16] for _ in range(8)]
    assert estimated_bits(vault_like) >= 80
    api_keys = ["sk_" + secrets.token_urlsafe(24) for _ in range(8)]
    assert estimated_bits(api_keys) >= 80
    assert estimated_bits([secrets.token_hex(4) for _ in range(8)]) < 80  # 32 bits, ~41 counted


def test_a_leak_is_found_whole_in_part_or_encoded_and_never_shown() -> None:
    value = secrets.token_urlsafe(24) + "/+="
    clean = ["rotation.finished secret=app run_id=abc", value[:11]]
    assert leaked(clean, {value}) == []
    for text in (value, f"token {value[:12]}...", f"?t={quote(value, safe='')}", repr(value)):
        found = leaked(["log line", text], {value})
        assert len(found) == 1, text
        assert value[2:] not in found[0] and value[:12] not in found[0]


def test_a_rig_repr_shows_no_value(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A failing case may print its rig: the values it remembers stay out of its repr."""

    class Tokens(RotatorConformance):
        kinds = ("example-token",)

    with Tokens().rig(TokenHarness, request, tmp_path) as rig:
        rig.generate(rig.current())
        assert len(rig.values) == 2
        assert leaked([repr(rig)], rig.values) == []
