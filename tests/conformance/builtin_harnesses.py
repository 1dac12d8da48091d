"""The harnesses of the kinds rotator ships, one file per kind beside this one.

Built-in kinds register no `rotator.harnesses` entry point (their harnesses need rotator's
test services), so rotator's own suites list them here.
"""

from __future__ import annotations

from rotator.testing import RotatorHarness
from tests.conformance.harness_api_key import ApiKeyAdminHarness, ApiKeySelfHarness
from tests.conformance.harness_postgres import (
    PostgresAdminHarness,
    PostgresAlternatingHarness,
    PostgresSelfHarness,
)
from tests.conformance.harness_vault_dynamic import VaultDynamicHarness

BUILTIN_HARNESSES: tuple[type[RotatorHarness], ...] = (
    PostgresSelfHarness,
    PostgresAdminHarness,
    PostgresAlternatingHarness,
    ApiKeyAdminHarness,
    ApiKeySelfHarness,
    VaultDynamicHarness,
)
