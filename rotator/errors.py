"""One exception tree for everything rotator raises on purpose.

The CLI maps each class to one line of text and an exit code; the engine maps
`TransientError` to a retry and `CredentialRejected` to a rollback. Messages
never contain a secret value: callers pass names, hosts and SQLSTATEs only.
"""

from __future__ import annotations

from collections.abc import Sequence


class RotatorError(Exception):
    """Root of every error rotator raises deliberately."""


class ConfigError(RotatorError):
    """Bad schedules.yaml or settings: the user's to fix, never retried."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        text = message if not self.problems else message + "\n" + "\n".join(self.problems)
        super().__init__(text)


class TransientError(RotatorError):
    """A target or store could not be reached; the step is retried with backoff."""


class CredentialRejected(RotatorError):
    """The target refused a credential: wrong password, unknown user, no login."""


class StoreError(RotatorError):
    """A secret store refused a request for a reason retrying will not fix."""


class LockLost(RotatorError):
    """The per-secret lease expired or was taken over while a run was using it."""


class RotationInProgress(RotatorError):
    """Another run holds the lease of this secret; this trigger does nothing."""


class UnknownSecret(ConfigError):
    """A secret name that schedules.yaml does not declare."""


class OutcomeUnknown(RotatorError):
    """A request may or may not have taken effect (a create that timed out), so repeating it
    at once could repeat its effect (a second API key). Neither the step nor the task retries
    it; the secret's next scheduled run tries again."""
