"""Every registered rotator kind passes the conformance suite of rotator.testing.

Built-in kinds have their harnesses in this directory, one file per kind; a kind installed
by a plugin package brings its own under the `rotator.harnesses` entry-point group.
"""

from __future__ import annotations

import pytest

from rotator.testing import RotatorConformance
from tests.conformance.harness_api_key import ApiKeyAdminHarness, ApiKeySelfHarness
from tests.conformance.harness_postgres import (
    PostgresAdminHarness,
    PostgresAlternatingHarness,
    PostgresSelfHarness,
)
from tests.conformance.harness_vault_dynamic import VaultDynamicHarness

pytestmark = pytest.mark.integration


class TestRotatorConformance(RotatorConformance):
    harnesses = (
        PostgresSelfHarness,
        PostgresAdminHarness,
        PostgresAlternatingHarness,
        ApiKeyAdminHarness,
        ApiKeySelfHarness,
        VaultDynamicHarness,
    )
