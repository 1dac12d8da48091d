"""`rotator`: validate, plan, rotate, get, put, history, status, retire, keygen, db, demo.

Every user mistake is one clear line on stderr and exit code 2; a rotation
that fails is exit code 1; `--debug` shows tracebacks. Only `get` prints a
secret value, because the user asked for it.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from cryptography.fernet import Fernet
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from rotator import cli_render
from rotator.config import Settings, load_settings
from rotator.credential import Credential
from rotator.errors import ConfigError, RotationInProgress, RotatorError
from rotator.logging import configure_logging
from rotator.results import RunResult
from rotator.runtime import Runtime, build_runtime, open_database
from rotator.schedule import load_plan
from rotator.stores import Stage

if TYPE_CHECKING:  # Celery is imported only by the commands that use it
    from rotator.cli_rotate import Queued

app = typer.Typer(
    help="Rotate secrets declared in schedules.yaml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="History database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")

out = Console()
err = Console(stderr=True)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class State:
    debug = False
    schedules: Path | None = None


SchedulesOption = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="schedules.yaml to use (default: ROTATOR_SCHEDULES)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    schedules: SchedulesOption = None,
) -> None:
    State.debug = debug
    State.schedules = schedules


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn our exceptions into one line and an exit code (tracebacks with --debug)."""
    try:
        yield
    except typer.Exit:
        raise
    except RotatorError as exc:
        if State.debug:
            raise
        first, *rest = str(exc).splitlines() or [type(exc).__name__]
        err.print(f"[bold red]error:[/] {escape(first)}", highlight=False, soft_wrap=True)
        for line in rest:
            err.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
        code = EXIT_USAGE if isinstance(exc, ConfigError | RotationInProgress) else EXIT_FAILED
        raise typer.Exit(code) from None
    except SQLAlchemyError as exc:
        if State.debug:
            raise
        # Only the driver's first line: the full text may quote statement parameters.
        reason = str(getattr(exc, "orig", None) or type(exc).__name__).strip().splitlines()
        err.print(
            f"error: history database: {reason[0] if reason else type(exc).__name__}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_FAILED) from None


def _settings(schedules: Path | None = None) -> Settings:
    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    chosen = schedules or State.schedules
    return settings.model_copy(update={"schedules": chosen}) if chosen else settings


@contextmanager
def _runtime(schedules: Path | None = None) -> Iterator[Runtime]:
    with user_errors():
        runtime = build_runtime(_settings(schedules))
        try:
            yield runtime
        finally:
            runtime.close()


@app.command()
def validate(schedules: SchedulesOption = None) -> None:
    """Check schedules.yaml; list every problem with its file and line."""
    with user_errors():
        settings = _settings(schedules)
        plan = load_plan(settings.schedules)
        out.print(
            f"[green]ok[/] {escape(str(plan.source))}: "
            f"{len(plan.secrets)} secrets, {len(plan.stores)} stores"
        )


@app.command()
def plan(schedules: SchedulesOption = None, as_json: JsonOption = False) -> None:
    """Show every secret, where it lives, its schedule and when it is next due."""
    _show_status(schedules, as_json, cli_render.plan_table)


@app.command()
def status(schedules: SchedulesOption = None, as_json: JsonOption = False) -> None:
    """The last outcome of every secret, and whether a rotation is under way."""
    _show_status(schedules, as_json, cli_render.status_table)


def _show_status(
    schedules: Path | None, as_json: bool, table: Callable[[list[dict[str, Any]]], Table]
) -> None:
    with _runtime(schedules) as runtime:
        rows = cli_render.status_rows(runtime)
        if as_json:
            out.print_json(data=rows)
        else:
            out.print(table(rows))


@app.command()
def rotate(
    names: Annotated[list[str] | None, typer.Argument(help="Secrets to rotate.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every secret in the file.")] = False,
    overdue: Annotated[
        bool, typer.Option("--overdue", help="The secrets whose slot has come, as beat sees it.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the runs and show each outcome.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds --wait waits at most.", min=1)
    ] = 600.0,
    inline: Annotated[
        bool, typer.Option("--inline", help="Run the engine in this process, not in a worker.")
    ] = False,
    schedules: SchedulesOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue rotations for a worker (--wait: follow them); exit 1 unless every one succeeded."""
    from rotator import cli_rotate

    with _runtime(schedules) as runtime:
        targets = cli_rotate.choose(runtime, names or [], every, overdue)
        if not targets:
            err.print("nothing to rotate: no secret is due now", highlight=False)
            if as_json:
                out.print_json(data=[])
            return
        if inline:
            _rotate_inline(runtime, targets, as_json)
            return
        with cli_rotate.client(runtime.settings) as celery:
            queued = cli_rotate.send(celery, targets)
            if not wait:
                _print_queued(queued, as_json)
                return
            for run in queued:
                _progress(f"{run.secret} {run.run_id[:8]}: queued as run {run.run_id}")
            try:
                results = cli_rotate.wait(celery, runtime, queued, timeout, _progress)
            except KeyboardInterrupt:
                err.print("stopped waiting; the queued runs go on (see `rotator history`)")
                raise typer.Exit(130) from None
        _print_results(results, as_json)


def _progress(line: str) -> None:
    err.print(line, highlight=False, markup=False, soft_wrap=True)


def _print_queued(queued: list[Queued], as_json: bool) -> None:
    if as_json:
        out.print_json(data=[run.as_dict() for run in queued])
        return
    for run in queued:
        out.print(f"queued {run.secret} as run {run.run_id}", highlight=False, markup=False)


def _print_results(results: list[RunResult], as_json: bool) -> None:
    if as_json:
        out.print_json(data=[r.as_dict() for r in results])
    else:
        out.print(cli_render.results_table(results))
    if not all(r.outcome == "succeeded" for r in results):
        raise typer.Exit(EXIT_FAILED)


def _rotate_inline(runtime: Runtime, targets: list[tuple[str, str | None]], as_json: bool) -> None:
    """Run each target here; an --overdue slot is claimed as a worker claims it, so a slot
    beat sends as well is rotated once (the other sender gets `duplicate`)."""
    import structlog

    from rotator.tasks import claim_slot, release_claim

    results = []
    for name, slot in targets:
        run_id = str(uuid.uuid4())
        taken = claim_slot(runtime, run_id, name, slot)
        if taken is not None:
            results.append(taken)
            continue
        bound = structlog.get_logger("rotator.cli").bind(secret=name, run_id=run_id, slot=slot)
        try:
            with err.status(f"rotating {escape(name)} ..."):
                results.append(runtime.engine.try_run(name, "manual", run_id, slot))
        finally:  # a run never recorded (skipped, crashed) gives its slot back; others keep it
            release_claim(lambda: runtime, run_id, name, slot, bound)
    _print_results(results, as_json)


@app.command()
def run(
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Worker processes.", min=1, max=64)
    ] = 2,
    loglevel: Annotated[
        str, typer.Option("--loglevel", "-l", help="debug, info, warning or error.")
    ] = "info",
    max_interval: Annotated[
        float, typer.Option("--max-interval", help="Longest beat sleep (seconds).", min=0.1)
    ] = 5.0,
    schedules: SchedulesOption = None,
) -> None:
    """A worker with beat inside it, for one host; SIGTERM or Ctrl-C stops it warmly."""
    from rotator.single_node import run_worker_and_beat

    if loglevel.lower() not in ("debug", "info", "warning", "error"):
        with user_errors():
            raise ConfigError(f"--loglevel {loglevel!r}: expected debug, info, warning or error")
    with user_errors():
        settings = _settings(schedules)
        plan = load_plan(settings.schedules)  # a bad file is refused before anything starts
        if schedules or State.schedules:  # worker and beat processes read the environment
            os.environ["ROTATOR_SCHEDULES"] = str(settings.schedules)
        err.print(
            f"rotator run: {len(plan.secrets)} secrets from {escape(str(plan.source))}; "
            "Ctrl-C or SIGTERM stops after the running rotations finish",
            highlight=False,
        )
        code = run_worker_and_beat(settings, concurrency, loglevel.upper(), max_interval)
    raise typer.Exit(code)


@app.command()
def get(
    name: str,
    stage: Annotated[Stage, typer.Option("--stage", case_sensitive=False)] = Stage.CURRENT,
    schedules: SchedulesOption = None,
) -> None:
    """Print a secret's value as JSON (on purpose: the only command that shows one)."""
    with _runtime(schedules) as runtime:
        spec = runtime.plan.secret(name)
        version = runtime.stores.get(spec.store).read(spec.path, stage)
        if version is None:
            raise ConfigError(f"secret {name!r} has no {stage.value} version")
        sys.stdout.write(version.credential.to_json() + "\n")


#: The most a credential on stdin may be; a value is a few fields, not a file.
MAX_STDIN_BYTES = 64 * 1024


@app.command()
def put(
    name: str,
    replace_pending: Annotated[
        bool,
        typer.Option(
            "--replace-pending",
            help="Drop a PENDING version no rotation can finish; the value given must be the "
            "one the target accepts now.",
        ),
    ] = False,
    rotate: Annotated[
        bool | None,
        typer.Option(
            "--rotate/--no-rotate",
            help="Rotate it at once (the value a person typed should not stay in use), or count "
            "the adoption as a rotation. Default: the secret's rotate_on_adopt (true).",
        ),
    ] = None,
    schedules: SchedulesOption = None,
) -> None:
    """Adopt an existing credential: JSON on stdin becomes CURRENT (recorded in history)."""
    with _runtime(schedules) as runtime:
        spec = runtime.plan.secret(name)
        credential = _credential_from_stdin()
        result = runtime.engine.adopt(
            name, credential, replace_pending=replace_pending, rotate=rotate
        )
        out.print(f"[green]adopted[/] {escape(name)}: version {result.version_id} is CURRENT")
        if spec.rotate_on_adopt if rotate is None else rotate:
            out.print("it is due for rotation now: beat (or `rotator rotate --overdue`) rotates it")
        else:
            out.print(f"next rotation as scheduled ({escape(spec.describe_schedule())})")


def _credential_from_stdin() -> Credential:
    example = '(expected a JSON object on stdin, e.g. {"password": "..."})'
    if sys.stdin is None or sys.stdin.closed:
        raise ConfigError(f"no standard input to read the credential from {example}")
    if sys.stdin.isatty():
        err.print(f"reading the credential from stdin {example}; end with Ctrl-D")
    data = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise ConfigError(f"stdin holds more than {MAX_STDIN_BYTES} bytes {example}")
    try:
        return Credential.from_json(data.decode("utf-8-sig"))
    except (ValueError, RecursionError):
        raise ConfigError(f"stdin is not a JSON object {example}") from None


@app.command()
def history(
    name: Annotated[str | None, typer.Argument(help="Only this secret.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
    schedules: SchedulesOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recent runs, newest first, with their steps."""
    with _runtime(schedules) as runtime:
        if name is not None:
            runtime.plan.secret(name)
        runs = runtime.history.runs(name, limit)
        if as_json:
            data = [cli_render.run_dict(runtime, run) for run in runs]
            out.print_json(data=data)
        else:
            out.print(cli_render.history_table(runs))


@app.command()
def keygen() -> None:
    """Print a new Fernet key for ROTATOR_ENCRYPTION_KEY."""
    sys.stdout.write(Fernet.generate_key().decode() + "\n")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the history database to the newest schema."""
    with user_errors():
        settings = _settings()
        open_database(settings).dispose()
        out.print("[green]ok[/] history database at the newest schema")


@app.command()
def retire(
    names: Annotated[list[str] | None, typer.Argument(help="Secrets (default: all).")] = None,
    show: Annotated[
        bool, typer.Option("--list", help="Only list the retirements still to do.")
    ] = False,
    schedules: SchedulesOption = None,
) -> None:
    """Revoke previous credentials whose grace period has passed (beat does this on its own)."""
    from rotator import cli_retire

    with _runtime(schedules) as runtime:
        if show:
            out.print(cli_retire.scheduled_table(runtime, names or []))
            return
        results = cli_retire.run_due(runtime, names or [])
        for result in results:
            out.print(cli_retire.describe(result))
        if not results:
            out.print("nothing is due for retirement")
        failed = [r for r in results if not isinstance(r, str) and r.outcome in ("retry", "failed")]
    if failed:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def demo(
    rounds: Annotated[int, typer.Option(help="Rotations per demo secret.", min=1, max=20)] = 2,
    secrets_count: Annotated[int, typer.Option("--secrets", help="Demo roles.", min=1, max=20)] = 3,
) -> None:
    """Beat and a worker rotate demo roles on a throwaway PostgreSQL; each password is proven."""
    from rotator.demo import run_demo

    with user_errors():
        configure_logging("console", "warning")
        try:
            ok = run_demo(out, rounds=rounds, secrets_count=secrets_count)
        except KeyboardInterrupt:  # during set-up or shut-down: everything is cleaned up
            err.print("demo interrupted")
            raise typer.Exit(130) from None
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


def main() -> Any:
    return app()


if __name__ == "__main__":
    main()
