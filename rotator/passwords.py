"""Password generation from the `password:` policy of schedules.yaml."""

from __future__ import annotations

import secrets
import string

from pydantic import BaseModel, ConfigDict, Field, model_validator

_CLASSES = (string.ascii_lowercase, string.ascii_uppercase, string.digits, string.punctuation)


class PasswordPolicy(BaseModel):
    """How new passwords look; defaults suit PostgreSQL and URL-embedded DSNs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    length: int = Field(32, ge=12, le=256)
    exclude_characters: str = ":/@\"'\\`"
    require_each_type: bool = True

    @model_validator(mode="after")
    def _leaves_an_alphabet(self) -> PasswordPolicy:
        if not self.alphabet():
            raise ValueError("exclude_characters leaves no characters to build a password from")
        return self

    def classes(self) -> list[str]:
        """Each character class with the excluded characters removed (empty ones dropped)."""
        excluded = set(self.exclude_characters)
        kept = ["".join(c for c in chars if c not in excluded) for chars in _CLASSES]
        return [chars for chars in kept if chars]

    def alphabet(self) -> str:
        return "".join(self.classes())


def generate_password(policy: PasswordPolicy) -> str:
    """A random password from `secrets`, one of each class when the policy asks for it."""
    alphabet = policy.alphabet()
    classes = policy.classes()
    while True:
        candidate = "".join(secrets.choice(alphabet) for _ in range(policy.length))
        if not policy.require_each_type or all(
            any(ch in chars for ch in candidate) for chars in classes
        ):
            return candidate
