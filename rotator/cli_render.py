"""Tables and JSON rows for the CLI; names, times and outcomes only, never values."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rich.markup import escape
from rich.table import Table

from rotator.history import Run, utcnow
from rotator.results import RunResult
from rotator.runtime import Runtime
from rotator.slots import Slot

_OUTCOME_STYLE = {
    "succeeded": "green",
    "adopted": "cyan",
    "skipped": "yellow",
    "rolled_back": "yellow",
    "failed": "red",
    "running": "blue",
}


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _outcome(value: str | None) -> str:
    if value is None:
        return "-"
    return f"[{_OUTCOME_STYLE.get(value, 'white')}]{value}[/]"


def status_rows(runtime: Runtime) -> list[dict[str, Any]]:
    """One row per secret: schedule, last outcome, next slot (as beat computes it), run now."""
    now = utcnow()
    slots, busy = beat_view(runtime, now)
    rows = []
    for name, spec in runtime.plan.secrets.items():
        last = runtime.history.last_run(name)
        success = runtime.history.last_success(name)
        slot = slots[name]
        rows.append(
            {
                "secret": name,
                "rotator": spec.rotator,
                "store": spec.store,
                "path": spec.path,
                "schedule": spec.describe_schedule(),
                "last_outcome": last.status if last else None,
                "last_run_at": _iso(last.started_at) if last else None,
                "last_success_at": _iso(success.finished_at) if success else None,
                "next_due": _iso(slot.due_at),
                "starts_at": _iso(slot.start_at),
                "reason": slot.reason,
                "slot": slot.slot,
                "overdue": slot.due_at <= now,
                "in_progress": name in busy or runtime.leases.holder(name) is not None,
                "error": last.error if last and last.status in ("failed", "rolled_back") else None,
            }
        )
    return rows


def beat_view(runtime: Runtime, now: datetime) -> tuple[dict[str, Slot], set[str]]:
    """Every secret's next slot and the secrets a live run holds, computed as beat does.

    The same bulk history read and the same `slots.next_slot` as `YamlScheduler`; a
    cron secret never rotated is anchored at `now`, as at beat's first look.
    """
    from rotator.beat import load_states
    from rotator.slots import SecretState, next_slot

    states, busy = load_states(runtime.database, {})
    slots = {
        name: next_slot(spec, states.get(name) or SecretState(first_seen=now), now)
        for name, spec in runtime.plan.secrets.items()
    }
    return slots, busy


def _parse(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def plan_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="rotation plan (next slot, as beat sends it)")
    table.add_column("secret", min_width=8, overflow="fold")
    for column in ("store", "schedule"):
        table.add_column(column)
    for column in ("next due", "starts"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason", overflow="fold")
    for row in rows:
        due = _when(_parse(row["next_due"]))
        starts = _when(_parse(row["starts_at"]))
        table.add_row(
            escape(row["secret"]),
            escape(row["store"]),
            escape(row["schedule"]),
            f"[bold red]{due}[/]" if row["overdue"] else due,
            "-" if starts == due else starts,
            "[blue]running[/]" if row["in_progress"] else _reason(row),
        )
    return table


def _reason(row: dict[str, Any]) -> str:
    reason = escape(row["reason"])
    return f"[bold red]{reason}, overdue[/]" if row["overdue"] else reason


def status_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="status")
    for column in ("secret", "last outcome", "last run", "last success", "next due", "now"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            escape(row["secret"]),
            _outcome(row["last_outcome"]),
            _when(_parse(row["last_run_at"])),
            _when(_parse(row["last_success_at"])),
            _when(_parse(row["next_due"])),
            "[blue]rotating[/]" if row["in_progress"] else "",
        )
    return table


def results_table(results: Sequence[RunResult]) -> Table:
    table = Table(title="rotations")
    for column in ("secret", "outcome", "run", "version", "took"):
        table.add_column(column, no_wrap=True)
    table.add_column("detail")
    for result in results:
        # The task's own total already holds its steps; without one, the steps add up.
        took = result.timings_ms.get("task") or sum(result.timings_ms.values())
        table.add_row(
            escape(result.secret),
            _outcome(result.outcome),
            result.run_id[:12],
            (result.version_id or "-")[:12],
            f"{took} ms" if took else "-",
            escape(
                ("resumed an interrupted run. " if result.resumed else "") + (result.error or "")
            ),
        )
    return table


def history_table(runs: Sequence[Run]) -> Table:
    table = Table(title="history (--json for steps and full errors)")
    for column, width in (("started", 20), ("secret", 10), ("trigger", 7), ("outcome", 11)):
        table.add_column(column, min_width=width)
    table.add_column("run", min_width=8, no_wrap=True)
    table.add_column("error", overflow="ellipsis", no_wrap=True, max_width=30)
    for run in runs:
        table.add_row(
            _when(run.started_at),
            escape(run.secret),
            escape(run.trigger),
            _outcome(run.status),
            run.id[:8],
            escape(run.error or ""),
        )
    return table


def run_dict(runtime: Runtime, run: Run) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "secret": run.secret,
        "trigger": run.trigger,
        "slot": run.slot,
        "status": run.status,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "version_id": run.version_id,
        "error": run.error,
        "steps": [
            {
                "step": e.step,
                "status": e.status,
                "at": _iso(e.at),
                "duration_ms": e.duration_ms,
                "detail": e.detail,
            }
            for e in runtime.history.steps(run.id)
        ],
    }
