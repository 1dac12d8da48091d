"""The rotation protocol: create -> apply -> test -> finish, with rollback.

Each step is one method, safe to run twice: `create` reuses a PENDING version
(a resume), `apply` is idempotent by the rotator's contract, `finish` is a
no-op on a version that is already CURRENT. A run interrupted by a crash is
resumed under its own run id by the next run of the secret, so a replay ends
in the same state: one new credential, applied once, recorded once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from rotator.base import RotatorContext, RotatorRegistry, SecretRotator
from rotator.credential import Credential
from rotator.errors import (
    CredentialRejected,
    LockLost,
    RotationInProgress,
    RotatorError,
    TransientError,
)
from rotator.guards import admin_moved, guard_identity, shares_value
from rotator.history import History
from rotator.locks import LeaseManager, SecretLease
from rotator.logging import scrub, secret_values
from rotator.results import RunResult
from rotator.resume import already_finished, settle_interrupted
from rotator.retirement import retire_later, retire_outgoing
from rotator.schedule import Plan, SecretSpec
from rotator.stores import SecretStore, SecretVersion, Stage
from rotator.storeset import StoreSet

__all__ = ["Engine", "RunResult", "StepHook", "scrubbed_text"]

log = structlog.get_logger("rotator.engine")
#: The attribute an unexpected exception leaving a run carries its scrubbed text in.
SCRUBBED_TEXT = "rotator_scrubbed_text"
T = TypeVar("T")

#: Called after each step with its name (created, applied, tested, promoted).
#: Tests use it to crash a run at a step boundary.
StepHook = Callable[[str], None]


@dataclass
class _Run:
    """The state of one run while it lives."""

    spec: SecretSpec
    run_id: str
    store: SecretStore
    rotator: SecretRotator
    lease: SecretLease
    log: Any
    timings_ms: dict[str, int] = field(default_factory=dict)
    #: Where the run's secret values are registered for scrubbing while it lives.
    secrets: ExitStack = field(default_factory=ExitStack)
    #: Admin secrets the rotator looked up during this run.
    lookups: dict[str, Credential] = field(default_factory=dict)


class _PendingExpired(CredentialRejected):
    """Internal: the run's PENDING expired and was dropped; the run ends rolled back."""


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def scrubbed_text(exc: BaseException) -> str | None:
    """The text of an exception that left a run, scrubbed of that run's values, if it did."""
    text = getattr(exc, SCRUBBED_TEXT, None)
    return text if isinstance(text, str) else None


class Engine:
    """Runs rotations of the secrets in a Plan."""

    def __init__(
        self,
        plan: Plan,
        stores: StoreSet,
        history: History,
        leases: LeaseManager,
        rotators: RotatorRegistry,
        step_hook: StepHook | None = None,
        retry_wait_seconds: float = 1.0,
    ) -> None:
        self.plan = plan
        self.stores = stores
        self.history = history
        self.leases = leases
        self.rotators = rotators
        self.step_hook = step_hook
        self.retry_wait_seconds = retry_wait_seconds

    # -- wiring -----------------------------------------------------------------

    def rotator_for(
        self,
        spec: SecretSpec,
        looked_up: dict[str, Credential] | None = None,
        scrub_scope: ExitStack | None = None,
    ) -> SecretRotator:
        """A rotator for one run; the admin secrets it looks up are kept in `looked_up` (the
        run clears it when a step fails, so a retry reads them again), and their values are
        scrubbed from logs and errors for as long as `scrub_scope` lives."""
        looked_up = {} if looked_up is None else looked_up

        def lookup(name: str) -> Credential:
            if name not in looked_up:
                looked_up[name] = self.read_current(name)
                if scrub_scope is not None:
                    scrub_scope.enter_context(secret_values(looked_up[name].secret_values()))
            return looked_up[name]

        context = RotatorContext(spec.name, spec.password, lookup)
        return self.rotators[spec.rotator](spec.target, context)

    def store_for(self, spec: SecretSpec) -> SecretStore:
        return self.stores.get(spec.store)

    def read_current(self, name: str) -> Credential:
        """The CURRENT credential of a declared secret (how rotators reach an admin)."""
        spec = self.plan.secret(name)
        version = self.store_for(spec).read(spec.path, Stage.CURRENT)
        if version is None:
            raise CredentialRejected(
                f"secret {name!r} has no CURRENT value; adopt one with `rotator put {name}`"
            )
        return version.credential

    # -- the run ----------------------------------------------------------------

    def run(
        self, name: str, trigger: str = "manual", run_id: str | None = None, slot: str | None = None
    ) -> RunResult:
        """Rotate one secret under its lease; RotationInProgress if another run holds it."""
        spec = self.plan.secret(name)
        trigger_id = run_id or uuid.uuid4().hex
        with self.leases.hold(name, trigger_id) as lease:
            finished = already_finished(self, name, trigger_id)
            if finished is not None:
                return finished
            store = self.store_for(spec)
            resumed_id = self.settle_interrupted(spec, store, trigger_id)
            if resumed_id is not None and resumed_id != trigger_id:
                self.history.record_resumed(trigger_id, name, trigger, slot, resumed_id)
            run_id = resumed_id or trigger_id
            self.history.start_run(run_id, name, trigger, slot)
            lookups: dict[str, Credential] = {}
            scrub_scope = ExitStack()
            run = _Run(
                spec=spec,
                run_id=run_id,
                store=store,
                rotator=self.rotator_for(spec, lookups, scrub_scope),
                lease=lease,
                log=log.bind(secret=name, run_id=run_id, trigger=trigger),
                secrets=scrub_scope,
                lookups=lookups,
            )
            if resumed_id:
                run.log.info("rotation.resumed")
            result = self._execute(run)
            result.resumed = resumed_id is not None
            return result

    def try_run(
        self, name: str, trigger: str = "manual", run_id: str | None = None, slot: str | None = None
    ) -> RunResult:
        """Like `run`, but a held lease is a 'skipped' result instead of an error."""
        try:
            return self.run(name, trigger, run_id, slot)
        except RotationInProgress as exc:
            return RunResult(run_id or "", name, "skipped", error=str(exc))

    def settle_interrupted(self, spec: SecretSpec, store: SecretStore, run_id: str) -> str | None:
        """The interrupted run of this secret to resume, if any (see rotator.resume)."""
        return settle_interrupted(self, spec, store, run_id)

    def _execute(self, run: _Run) -> RunResult:
        spec = run.spec
        # The values stay registered until a failure is recorded, so its text is scrubbed too.
        with run.secrets as secret_scope:
            try:
                stages = run.store.read_stages(spec.path)
                current, previous = stages[Stage.CURRENT], stages[Stage.PREVIOUS]
                pending_now = stages[Stage.PENDING]
                if pending_now is None and current is not None and current.token == run.run_id:
                    run.log.info("rotation.already_finished")
                    return self._record_success(run, current, outgoing=previous)
                secret_scope.enter_context(self._secrets_of(current, previous, pending_now))
                self._look_up_admin(run)
                pending = self.create(run, current, pending_now)
                secret_scope.enter_context(secret_values(pending.credential.secret_values()))
                self.apply(run, pending, current, previous)
                try:
                    self.test(run, pending)
                except CredentialRejected as exc:
                    return self.rollback(run, pending, current, previous, exc)
                return self.finish(run, pending, current, previous)
            except LockLost as exc:
                return self._lost_result(run, exc)
            except _PendingExpired as exc:
                return self._record_outcome(run, "rolled_back", None, scrub(str(exc)))
            except RotatorError as exc:
                return self._record_failure(run, exc)
            except Exception as exc:
                # Not ours (a bug, a library error): it propagates, but its scrubbed text is
                # taken now, while the run's values are still known (see `scrubbed_text`).
                text = _first_line(scrub(str(exc)))  # scrubbed whole: a value may span lines
                setattr(exc, SCRUBBED_TEXT, f"{type(exc).__name__}: {text}")
                raise

    def _look_up_admin(self, run: _Run) -> None:
        """Read the admin credential up front, through the run's own lookup (which registers
        its values for scrubbing), so even the first log line of the run hides them."""
        admin = run.spec.admin_secret
        if admin is not None:
            with suppress(RotatorError):  # a missing admin fails later, in apply, with its reason
                run.rotator.context.lookup_secret(admin)

    @contextmanager
    def _secrets_of(self, *versions: SecretVersion | None) -> Iterator[None]:
        values = [v for version in versions if version for v in version.credential.secret_values()]
        with secret_values(values):
            yield

    # -- the four steps ---------------------------------------------------------

    def create(
        self, run: _Run, current: SecretVersion | None, pending: SecretVersion | None
    ) -> SecretVersion:
        """Reuse a PENDING version (a resume), else generate one and store it as PENDING."""
        if pending is None:
            # generate may make something at the target (an API key, a lease): not for a run
            # that has lost its lease.
            run.lease.check()
            credential = run.rotator.generate(current.credential if current else None)
            run.secrets.enter_context(secret_values(credential.secret_values()))
            guard_identity(run.spec, run.rotator, credential, current)
            pending = self._step(
                run, "create", lambda: run.store.put_pending(run.spec.path, credential, run.run_id)
            )
        else:
            guard_identity(run.spec, run.rotator, pending.credential, current)
            if run.rotator.expired(pending.credential):
                self._drop_expired(run, pending, current)
            if not self.history.record_step(
                run.run_id, "create", "ok", 0, "reused PENDING", fence=run.lease
            ):
                raise self._lost(run)
        run.log.info("rotation.created", version_id=pending.version_id)
        self._hook("created")
        return pending

    def apply(
        self,
        run: _Run,
        pending: SecretVersion,
        current: SecretVersion | None,
        previous: SecretVersion | None,
    ) -> None:
        """Make the target accept PENDING (PENDING is already safe in the store)."""

        def action() -> None:
            try:
                run.rotator.apply(
                    pending.credential,
                    current.credential if current else None,
                    previous.credential if previous else None,
                )
            except CredentialRejected as exc:
                admin = run.spec.admin_secret
                if admin is not None and admin_moved(self, admin, run.lookups.get(admin)):
                    # Retried, the lookup reads the admin's new CURRENT.
                    raise TransientError(
                        f"{exc} (the admin secret {admin!r} is being rotated or was just "
                        "rotated; trying again with its new CURRENT)"
                    ) from None
                raise

        self._step(run, "apply", action)
        run.log.info("rotation.applied", version_id=pending.version_id)
        self._hook("applied")

    def test(self, run: _Run, pending: SecretVersion) -> None:
        """Prove PENDING works over a real connection."""
        self._step(run, "test", lambda: run.rotator.test(pending.credential), confirm=False)
        run.log.info("rotation.tested", version_id=pending.version_id)
        self._hook("tested")

    def finish(
        self,
        run: _Run,
        pending: SecretVersion,
        current: SecretVersion | None,
        previous: SecretVersion | None,
    ) -> RunResult:
        """PENDING becomes CURRENT, CURRENT becomes PREVIOUS; the run is a success.

        The old PREVIOUS leaves the store here: if it still awaits retirement, it is
        retired first (rotator.retirement), while its value can still be read.
        """
        staying = [pending.credential] + ([current.credential] if current else [])
        retire_outgoing(self, run.spec, run.rotator, previous, staying, run.lease)
        self._step(
            run,
            "finish",
            lambda: run.store.promote(run.spec.path, pending.version_id),
        )
        self._hook("promoted")
        return self._record_success(run, pending, outgoing=current)

    def rollback(
        self,
        run: _Run,
        pending: SecretVersion,
        current: SecretVersion | None,
        previous: SecretVersion | None,
        reason: CredentialRejected,
    ) -> RunResult:
        """The target refused PENDING: put CURRENT back, prove it, drop PENDING."""
        run.log.warning("rotation.rejected", version_id=pending.version_id, error=str(reason))
        if current is None:
            # Nothing to put back, and apply may have made the target accept PENDING:
            # dropping it could lose the only credential that works (invariant 1).
            return self._record_failure(run, reason)
        restore = current.credential
        self._step(
            run,
            "rollback",
            lambda: run.rotator.apply(
                restore, pending.credential, previous.credential if previous else None
            ),
        )
        self._step(run, "rollback", lambda: run.rotator.test(restore), confirm=False)
        # Whatever PENDING was granted (an API key, a lease) is no longer needed, unless it is
        # a value still in use (a store that shows one version as both PENDING and CURRENT).
        in_use = [c.credential for c in (current, previous) if c is not None]
        if not shares_value(pending.credential, in_use):
            self._step(run, "rollback", lambda: run.rotator.retire(pending.credential))
        self._step(
            run, "rollback", lambda: run.store.discard_pending(run.spec.path, pending.version_id)
        )
        return self._record_outcome(run, "rolled_back", pending.version_id, scrub(str(reason)))

    def _record_outcome(
        self, run: _Run, outcome: str, version_id: str | None, error: str
    ) -> RunResult:
        """Record a final outcome other than success (fenced by the run's lease)."""
        if not self.history.finish_run(run.run_id, outcome, version_id, error, fence=run.lease):
            return self._lost_result(run, self._lost(run))
        run.log.warning(f"rotation.{outcome}", version_id=version_id, error=error)
        return RunResult(
            run.run_id,
            run.spec.name,
            outcome,
            version_id,
            error,
            timings_ms=run.timings_ms,
        )

    # -- helpers ----------------------------------------------------------------

    def _step(self, run: _Run, step: str, action: Callable[[], T], confirm: bool = True) -> T:
        """Run one step under the lease, retrying transient errors with backoff.

        Before a step that changes something outside the run (the store, the target) the
        lease is confirmed in the database, so a run that stalled past its lease (a paused
        process) stops there; a step that only reads (test) checks the renewal thread's
        verdict, which costs no round trip. Step events are written fenced by the lease: a
        run that lost it stops at its next record and never writes into its successor's.
        The finish step's event is the exception: once the promote happened, it did.
        """

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            detail = scrub(str(exc)) if exc else None
            run.lookups.clear()  # a retry reads the admin secret again
            self.history.record_step(run.run_id, step, "retry", None, detail, fence=run.lease)
            run.log.warning(
                "rotation.retrying", step=step, attempt=state.attempt_number, error=detail
            )

        retrying = Retrying(
            stop=stop_after_attempt(run.spec.max_attempts),
            wait=wait_exponential(multiplier=self.retry_wait_seconds, max=30),
            retry=retry_if_exception_type(TransientError),
            before_sleep=before_sleep,
            reraise=True,
        )
        started = time.monotonic()
        try:
            for attempt in retrying:
                with attempt:
                    run.lease.check(confirm)
                    result = action()
        except RotatorError:
            run.lookups.clear()  # a rollback reads the admin secret again
            raise
        elapsed = int((time.monotonic() - started) * 1000)
        run.timings_ms[step] = run.timings_ms.get(step, 0) + elapsed
        fence = None if step == "finish" else run.lease
        if not self.history.record_step(run.run_id, step, "ok", elapsed, fence=fence):
            raise self._lost(run)
        return result

    def _drop_expired(
        self, run: _Run, pending: SecretVersion, current: SecretVersion | None
    ) -> None:
        """A PENDING that expired before its run could finish (the worker was down longer than
        a lease) can never work: it is retired, then dropped, and the run ends `rolled_back`
        (final: a redelivery does not generate under its spent token); the next run makes a
        fresh one. If retiring fails, PENDING stays: the target may still accept it."""
        in_use = [current.credential] if current else []
        if not shares_value(pending.credential, in_use):
            self._step(run, "create", lambda: run.rotator.retire(pending.credential))
        self._step(
            run, "create", lambda: run.store.discard_pending(run.spec.path, pending.version_id)
        )
        raise _PendingExpired(
            f"PENDING version {pending.version_id} expired before its run could finish; it was "
            "retired and dropped, and the next run makes a new one"
        )

    @staticmethod
    def _lost(run: _Run) -> LockLost:
        return LockLost(f"the lease of secret {run.spec.name!r} was lost to another run")

    def _hook(self, point: str) -> None:
        if self.step_hook is not None:
            self.step_hook(point)

    def _record_success(
        self, run: _Run, version: SecretVersion, outgoing: SecretVersion | None
    ) -> RunResult:
        """Record the run a success; `outgoing` (the old CURRENT, PREVIOUS now) is scheduled
        for retirement after the secret's grace period when the rotator retires anything."""
        if outgoing is not None and outgoing.version_id == version.version_id:
            outgoing = None
        retire = retire_later(run.spec, run.rotator, outgoing, version.credential)
        self.history.finish_run(
            run.run_id,
            "succeeded",
            version.version_id,
            rotate_by=run.rotator.rotate_by(version.credential),
            retire=retire,
        )
        run.log.info("rotation.finished", version_id=version.version_id)
        return RunResult(
            run.run_id, run.spec.name, "succeeded", version.version_id, timings_ms=run.timings_ms
        )

    def _record_failure(self, run: _Run, exc: RotatorError) -> RunResult:
        """Record the run failed, unless its lease is gone: then the record is its successor's."""
        error = scrub(f"{type(exc).__name__}: {exc}")
        if not self.history.record_step(
            run.run_id, "failed", "error", None, error, fence=run.lease
        ) or not self.history.finish_run(run.run_id, "failed", error=error, fence=run.lease):
            return self._lost_result(run, self._lost(run))
        run.log.error("rotation.failed", error=error)
        return RunResult(
            run.run_id, run.spec.name, "failed", error=error, timings_ms=run.timings_ms
        )

    def _lost_result(self, run: _Run, exc: LockLost) -> RunResult:
        """Another run holds the lease now and may be resuming this very run id: the history
        of the run is its to write, not ours."""
        error = scrub(f"{type(exc).__name__}: {exc}")
        run.log.error("rotation.failed", error=error)
        return RunResult(
            run.run_id, run.spec.name, "failed", error=error, timings_ms=run.timings_ms
        )

    # -- adoption ---------------------------------------------------------------

    def adopt(
        self,
        name: str,
        credential: Credential,
        replace_pending: bool = False,
        rotate: bool | None = None,
    ) -> RunResult:
        """Store an existing credential as CURRENT (`rotator put`); see rotator.adoption."""
        from rotator.adoption import adopt

        return adopt(self, name, credential, replace_pending, rotate)
