"""The example plugin passes the rotator conformance suite (its harness comes by entry point)."""

from __future__ import annotations

from rotator.testing import RotatorConformance


class TestExampleTokenConformance(RotatorConformance):
    kinds = ("example-token",)
