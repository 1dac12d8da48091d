"""Every registered rotator kind passes the conformance suite of rotator.testing.

Built-in kinds have their harnesses in this directory, one file per kind; a kind installed
by a plugin package brings its own under the `rotator.harnesses` entry-point group. That
every registered kind has one is checked without servers, in test_coverage.py.
"""

from __future__ import annotations

import pytest

from rotator.testing import RotatorConformance
from tests.conformance.builtin_harnesses import BUILTIN_HARNESSES

pytestmark = pytest.mark.integration


class TestRotatorConformance(RotatorConformance):
    harnesses = BUILTIN_HARNESSES
    every_kind = True
