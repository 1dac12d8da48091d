"""`rotator retire`: list scheduled retirements, or run the due ones in this process.

Beat sends `rotator.retire` on its own; this is for a deployment without beat, and for an
operator who wants to see what is still to be revoked (and why an attempt failed).
"""

from __future__ import annotations

from datetime import datetime

from rich.markup import escape
from rich.table import Table

from rotator.errors import RotationInProgress
from rotator.history import utcnow
from rotator.retirement import Retirements, RetireOutcome, retire_due
from rotator.runtime import Runtime


def scheduled_table(runtime: Runtime, names: list[str]) -> Table:
    """Every retirement still to do (of `names`, or all), soonest first."""
    rows = Retirements(runtime.database).scheduled(given_up=True)
    table = Table("secret", "version", "due", "status", "attempts", "last error")
    table.title = "scheduled retirements"
    now = utcnow()
    for row in rows:
        if names and row.secret not in names:
            continue
        declared = row.secret in runtime.plan.secrets
        table.add_row(
            escape(row.secret) + ("" if declared else " [red](not in schedules.yaml)[/]"),
            escape(row.version_id),
            _when(row.due_at, now),
            "scheduled" if row.status == "scheduled" else "[red]given up: revoke by hand[/]",
            str(row.attempts),
            escape(row.last_error or ""),
        )
    return table


def run_due(runtime: Runtime, names: list[str]) -> list[RetireOutcome | str]:
    """Retire what is due for `names` (or every declared secret); a held secret is a note."""
    for name in names:
        runtime.plan.secret(name)  # UnknownSecret before anything runs
    due = Retirements(runtime.database).next_due()
    chosen = names or sorted(name for name in due if name in runtime.plan.secrets)
    now = utcnow()
    results: list[RetireOutcome | str] = []
    for name in chosen:
        if name not in due or due[name] > now:
            continue
        try:
            results += retire_due(runtime.engine, name, now)
        except RotationInProgress:
            results.append(f"{name}: a rotation holds it; try again when it has finished")
    return results


def describe(result: RetireOutcome | str) -> str:
    if isinstance(result, str):
        return f"[yellow]skipped[/] {escape(result)}"
    colour = {"retired": "green", "retry": "yellow"}.get(result.outcome, "red")
    line = f"[{colour}]{result.outcome}[/] {escape(result.secret)} version {result.version_id}"
    if result.error:
        line += f": {escape(result.error)}"
    if result.next_at:
        line += f" (next try {result.next_at})"
    return line


def _when(moment: datetime, now: datetime) -> str:
    seconds = int((moment - now).total_seconds())
    if seconds <= 0:
        return f"{moment:%Y-%m-%d %H:%M} UTC (due)"
    return f"{moment:%Y-%m-%d %H:%M} UTC"


__all__ = ["describe", "run_due", "scheduled_table"]
