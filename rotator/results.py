"""RunResult: what one run did, in names and ids only."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunResult:
    """What a run did; never holds a secret value, so it is safe to print, log or return."""

    run_id: str
    secret: str
    outcome: str
    version_id: str | None = None
    error: str | None = None
    resumed: bool = False
    timings_ms: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing went wrong: a rotation or adoption happened, or one was already running."""
        return self.outcome in ("succeeded", "adopted", "skipped")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
