"""`rotator demo`: real rotations of demo roles on a throwaway PostgreSQL.

Starts a PostgreSQL cluster with SCRAM authentication on a free port,
creates an admin role and a few application roles, adopts the admin
credential, rotates every role a few times with the real engine and the
embedded store, and proves after each rotation, over a fresh connection,
that the new password logs in and the previous one no longer does.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from cryptography.fernet import Fernet
from pydantic import SecretStr
from rich.console import Console
from rich.live import Live
from rich.table import Table

from rotator.config import Settings
from rotator.credential import Credential
from rotator.devservers import LocalPostgres
from rotator.runtime import build_runtime
from rotator.stores import Stage


def _logs_in(server: LocalPostgres, username: str, password: str | None) -> bool:
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


def _schedules(server: LocalPostgres, admin_role: str, roles: dict[str, str]) -> str:
    lines = ["version: 1", "stores: {local: {type: embedded}}", "secrets:"]
    entries = {"pg-admin": admin_role, **roles}
    for name, role in entries.items():
        lines += [
            f"  {name}:",
            "    rotator: postgres-password",
            "    store: local",
            "    every: 1d",
            f"    target: {{host: {server.host}, port: {server.port}, username: {role}"
            + ("" if name == "pg-admin" else ", admin_secret: pg-admin")
            + "}",
        ]
    return "\n".join(lines) + "\n"


def _create_roles(server: LocalPostgres, passwords: dict[str, str], admin_role: str) -> None:
    from psycopg import sql

    with psycopg.connect(**server.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        for role, password in passwords.items():
            extra = "CREATEROLE" if role == admin_role else ""
            verifier = conn.pgconn.encrypt_password(
                password.encode(), role.encode(), b"scram-sha-256"
            ).decode()
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                    sql.Identifier(role), sql.SQL(extra), sql.Literal(verifier)
                )
            )
        for role in passwords:
            if role != admin_role:  # PostgreSQL 16+: CREATEROLE needs ADMIN OPTION per role
                conn.execute(
                    sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                        sql.Identifier(role), sql.Identifier(admin_role)
                    )
                )


def run_demo(console: Console, rounds: int = 2, secrets_count: int = 3) -> bool:
    """Run the demo; True only if every rotation was verified against PostgreSQL."""
    workdir = Path(tempfile.mkdtemp(prefix="rotator-demo-"))
    console.print("[bold]rotator demo[/]: starting a throwaway PostgreSQL (scram-sha-256) ...")
    server = LocalPostgres().start()
    runtime = None
    try:
        admin_role = "rotator_admin"
        roles = {f"demo-app-{i}": f"demo_app_{i}" for i in range(1, secrets_count + 1)}
        initial = {role: secrets.token_urlsafe(18) for role in [admin_role, *roles.values()]}
        _create_roles(server, initial, admin_role)
        schedules = workdir / "schedules.yaml"
        schedules.write_text(_schedules(server, admin_role, roles))
        settings = Settings(
            schedules=schedules,
            var_dir=workdir / "var",
            encryption_key=SecretStr(Fernet.generate_key().decode()),
        )
        runtime = build_runtime(settings)
        for name, role in {"pg-admin": admin_role, **roles}.items():
            runtime.engine.adopt(name, Credential(password=initial[role]))
        console.print(
            f"PostgreSQL on {server.host}:{server.port}; adopted the initial credentials; "
            f"rotating {len(roles)} roles x {rounds} rounds with the embedded store\n"
        )
        table = Table(title="demo rotations")
        for column in ("#", "secret", "outcome", "version", "ms", "new works", "old works"):
            table.add_column(column, no_wrap=True, min_width=len(column))
        verified = total = 0
        store = runtime.stores.get("local")
        with Live(table, console=console, refresh_per_second=8):
            for round_no in range(1, rounds + 1):
                for name, role in roles.items():
                    result = runtime.engine.run(name, trigger="demo")
                    current = store.read(name, Stage.CURRENT)
                    previous = store.read(name, Stage.PREVIOUS)
                    new_ok = current is not None and _logs_in(
                        server, role, current.credential.password
                    )
                    old_refused = previous is None or not _logs_in(
                        server, role, previous.credential.password
                    )
                    good = result.outcome == "succeeded" and new_ok and old_refused
                    total += 1
                    verified += good
                    table.add_row(
                        str(round_no),
                        name,
                        _mark(result.outcome == "succeeded", result.outcome),
                        (result.version_id or "-")[:8],
                        str(sum(result.timings_ms.values())),
                        _mark(new_ok),
                        _mark(old_refused, ("no" if old_refused else "YES") if previous else "n/a"),
                    )
        ok = verified == total
        colour = "green" if ok else "red"
        console.print(
            f"\n[bold {colour}]{verified}/{total} rotations verified[/] against PostgreSQL; "
            f"history: {len(runtime.history.runs(limit=1000))} runs recorded, no values in it."
        )
        return ok
    finally:
        if runtime is not None:
            runtime.close()
        server.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def _mark(ok: bool, text: Any = None) -> str:
    label = text if text is not None else ("yes" if ok else "NO")
    return f"[green]{label}[/]" if ok else f"[bold red]{label}[/]"
