"""`rotator demo`: scheduled rotations on a throwaway PostgreSQL, through beat and a worker.

Starts a PostgreSQL cluster with SCRAM authentication on a free port, creates an
admin role and a few application roles, adopts their passwords, and starts
`rotator run` (a worker with beat inside it, on the default filesystem broker and
SQLite history in a temporary var dir) with demo secrets due every few seconds.
The demo only watches: each run beat triggers is shown as it ends, and its new
password is proven over a fresh connection (it logs in, the previous one is
refused). It ends once every demo secret has rotated `rounds` times, or on Ctrl-C.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from cryptography.fernet import Fernet
from psycopg import sql
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from rich.console import Console

from rotator.config import Settings
from rotator.credential import Credential
from rotator.devservers import LocalPostgres
from rotator.history import Run
from rotator.runtime import Runtime, build_runtime
from rotator.stores import Stage

ADMIN_ROLE = "rotator_admin"
#: How often beat rotates each demo secret: short, so the demo shows several rounds.
EVERY = "4s"


class DemoSettings(Settings):
    """The demo's settings: only what it passes, never the user's ROTATOR_* or .env.

    The user's variables may point at a real history database or store; the demo must
    neither write there nor watch a database its worker does not use.
    """

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


@dataclass(frozen=True)
class Check:
    """What the demo proved about one finished run."""

    run: Run
    new_logs_in: bool
    old_refused: bool
    had_previous: bool

    @property
    def verified(self) -> bool:
        return self.run.status == "succeeded" and self.new_logs_in and self.old_refused


def logs_in(server: LocalPostgres, username: str, password: str | None) -> bool:
    """A fresh connection with this password (no pool, no cached session)."""
    try:
        psycopg.connect(
            host=server.host,
            port=server.port,
            dbname="postgres",
            user=username,
            password=password or "",
            connect_timeout=5,
        ).close()
    except psycopg.OperationalError:
        return False
    return True


def schedules_text(server: LocalPostgres, roles: dict[str, str]) -> str:
    """The admin rotates daily (not during the demo); app roles every EVERY."""
    lines = ["version: 1", "stores: {local: {type: embedded}}", "secrets:"]
    for name, role in {"pg-admin": ADMIN_ROLE, **roles}.items():
        admin = name == "pg-admin"
        lines += [
            f"  {name}:",
            "    rotator: postgres-password",
            "    store: local",
            f"    every: {'1d' if admin else EVERY}",
            "    window: 1s",
            f"    target: {{host: {server.host}, port: {server.port}, username: {role}"
            + ("" if admin else ", admin_secret: pg-admin")
            + "}",
        ]
    return "\n".join(lines) + "\n"


def create_roles(server: LocalPostgres, passwords: dict[str, str]) -> None:
    """Roles with SCRAM verifiers computed here; the admin may manage every app role."""
    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        for role, password in passwords.items():
            extra = "CREATEROLE" if role == ADMIN_ROLE else ""
            verifier = conn.pgconn.encrypt_password(
                password.encode(), role.encode(), b"scram-sha-256"
            ).decode()
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                    sql.Identifier(role), sql.SQL(extra), sql.Literal(verifier)
                )
            )
        for role in passwords:
            if role != ADMIN_ROLE:  # PostgreSQL 16+: CREATEROLE needs ADMIN OPTION per role
                conn.execute(
                    sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                        sql.Identifier(role), sql.Identifier(ADMIN_ROLE)
                    )
                )


@dataclass
class DemoSetup:
    """The server, the roles and an in-process runtime over the demo's history and store."""

    workdir: Path
    server: LocalPostgres
    roles: dict[str, str]
    settings: Settings
    runtime: Runtime
    #: Every password the demo has seen, to prove none is in the history or the logs.
    seen: set[str] = field(default_factory=set, repr=False)

    def check(self, run: Run) -> Check:
        """Prove the run's new password logs in and the one it replaced is refused."""
        store = self.runtime.stores.get("local")
        role = self.roles[run.secret]
        current = store.read(run.secret, Stage.CURRENT)
        previous = store.read(run.secret, Stage.PREVIOUS)
        is_this_run = current is not None and current.version_id == run.version_id
        new_ok = (
            is_this_run
            and current is not None
            and logs_in(self.server, role, current.credential.password)
        )
        old_refused = previous is None or not logs_in(
            self.server, role, previous.credential.password
        )
        for version in (current, previous):
            if version is not None and version.credential.password:
                self.seen.add(version.credential.password)
        return Check(run, new_ok, old_refused, previous is not None)

    def leaks(self, *files: Path) -> int:
        """How many seen passwords appear in plain text in the history files or `files`."""
        paths = [*self.settings.var_dir.glob("rotator.db*"), *files]
        blob = b"".join(path.read_bytes() for path in paths if path.is_file())
        return sum(password.encode() in blob for password in self.seen)

    def close(self) -> None:
        try:
            self.runtime.close()
        finally:
            self.server.stop()
            shutil.rmtree(self.workdir, ignore_errors=True)


def set_up(console: Console, secrets_count: int) -> DemoSetup:
    """Start PostgreSQL, create the roles, write schedules.yaml and adopt the passwords."""
    console.print("[bold]rotator demo[/]: starting a throwaway PostgreSQL (scram-sha-256) ...")
    workdir: Path | None = None
    server: LocalPostgres | None = None
    try:  # Ctrl-C or a failure at any point leaves no directory and no server behind
        with _signals_held():  # made and remembered at once: Ctrl-C cannot fall in between
            workdir = Path(tempfile.mkdtemp(prefix="rotator-demo-"))
        with _signals_held():
            server = LocalPostgres()
        server.start()
        roles = {f"demo-app-{i}": f"demo_app_{i}" for i in range(1, secrets_count + 1)}
        initial = {role: secrets.token_urlsafe(18) for role in [ADMIN_ROLE, *roles.values()]}
        create_roles(server, initial)
        schedules = workdir / "schedules.yaml"
        schedules.write_text(schedules_text(server, roles))
        settings = DemoSettings(
            schedules=schedules,
            var_dir=workdir / "var",
            encryption_key=SecretStr(Fernet.generate_key().decode()),
        )
        runtime = build_runtime(settings)
        for name, role in {"pg-admin": ADMIN_ROLE, **roles}.items():
            runtime.engine.adopt(name, Credential(password=initial[role]))
    except BaseException:
        if server is not None:
            server.stop()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    return DemoSetup(workdir, server, roles, settings, runtime)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP wait for the block to end (then arrive as usual)."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP take Ctrl-C's path, so the servers are stopped and the files go."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_demo(console: Console, rounds: int = 2, secrets_count: int = 3) -> bool:
    """Run the demo; True only if every rotation seen was verified against PostgreSQL.

    KeyboardInterrupt (Ctrl-C, SIGTERM, SIGHUP) leaves after everything was cleaned up.
    """
    with _terminate_as_interrupt():
        return _run_demo(console, rounds, secrets_count)


def _run_demo(console: Console, rounds: int, secrets_count: int) -> bool:
    from rotator.demo_live import watch_rotations

    setup = set_up(console, secrets_count)
    try:
        console.print(
            f"PostgreSQL on {setup.server.host}:{setup.server.port}; initial passwords "
            f"adopted.\nStarting `rotator run` (worker + beat, filesystem broker, SQLite); "
            f"{len(setup.roles)} roles rotate every {EVERY}, {rounds} times each.\n"
        )
        return watch_rotations(console, setup, rounds)
    finally:
        setup.close()
