"""Rotations per second through Celery versus a raw psycopg loop doing the same work.

Run by hand from the repository root: `.venv/bin/python -m bench.throughput [--roles N]`.

One throwaway SCRAM PostgreSQL (rotator.devservers.LocalPostgres) is the target of
every rotation and also holds the PostgreSQL history database (and the raw loop's
store table, in a database of its own); a throwaway redis-server is the broker and
result backend. The Celery side is a real `celery -A rotator worker --concurrency 2`;
after a warm-up (every pool process has built its runtime and admin connection) N
`rotator.rotate` tasks are enqueued at once and timed from the first enqueue until
the history database says every run has finished. The raw side is 2 processes, each
with one admin connection and one store connection, doing per role what a rotation
must: generate a password, ALTER ROLE with a SCRAM verifier computed client-side, log
in with the new password, write the encrypted value to a store row. `--profile K`
then runs K rotations in this process under cProfile and prints where one spends its
time (history, lease, store, target, logging) and how many SQL statements it sends.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import multiprocessing as mp
import os
import pstats
import secrets
import statistics
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from cryptography.fernet import Fernet
from psycopg import sql
from sqlalchemy import Engine, event, func, select

from rotator.config import Settings
from rotator.credential import Credential
from rotator.devservers import LocalPostgres
from rotator.errors import LockLost
from rotator.history import Database, Run
from rotator.locks import SecretLease
from rotator.logging import configure_logging
from rotator.passwords import PasswordPolicy, generate_password
from rotator.runtime import Runtime, build_runtime
from tests.services.celery_procs import CeleryWorker, client_app, rotator_env
from tests.services.redis import RedisServer, start_redis_server

CONCURRENCY = 2
WARMUP = 10
ADMIN = "bench_admin"


@dataclass
class Bench:
    """The servers and settings one run shares between its two sides."""

    pg: LocalPostgres
    redis: RedisServer
    workdir: Path
    settings: Settings
    admin_password: str
    key: str

    def conninfo(self, **overrides: Any) -> dict[str, Any]:
        info = {**self.pg.conninfo(), "user": ADMIN, "password": self.admin_password}
        return {**info, **overrides}


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p95 of `values`."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94]


# -- set-up ---------------------------------------------------------------------------


def create_roles(pg: LocalPostgres, admin_password: str, roles: Iterable[str]) -> None:
    """The CREATEROLE admin and one login role per name, each with a random password."""
    with psycopg.connect(**pg.conninfo(), autocommit=True) as conn:
        for role, password in [(ADMIN, admin_password), *((r, "") for r in roles)]:
            password = password or secrets.token_urlsafe(16)
            verifier = conn.pgconn.encrypt_password(
                password.encode(), role.encode(), b"scram-sha-256"
            ).decode()
            extra = sql.SQL("CREATEROLE" if role == ADMIN else "")
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                    sql.Identifier(role), extra, sql.Literal(verifier)
                )
            )
            if role != ADMIN:  # PostgreSQL 16+ lets a CREATEROLE admin alter only these
                conn.execute(
                    sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                        sql.Identifier(role), sql.Identifier(ADMIN)
                    )
                )
        conn.execute("CREATE DATABASE rotator_history")
        conn.execute(sql.SQL("CREATE DATABASE raw_store OWNER {}").format(sql.Identifier(ADMIN)))


def write_schedules(path: Path, pg: LocalPostgres, roles: list[str]) -> None:
    """pg-admin plus one postgres-password secret per role (secret name = role name)."""
    base = {"host": pg.host, "port": pg.port, "dbname": "postgres"}
    entries = {"pg-admin": {**base, "username": ADMIN}}
    entries.update({role: {**base, "username": role, "admin_secret": "pg-admin"} for role in roles})
    lines = ["version: 1", "stores: {local: {type: embedded}}", "secrets:"]
    for name, target in entries.items():
        entry = {"rotator": "postgres-password", "store": "local", "every": "30d", "target": target}
        lines.append(f"  {json.dumps(name)}: {json.dumps(entry)}")
    path.write_text("\n".join(lines) + "\n")


def start(rotated: list[str], raw: list[str]) -> Bench:
    """Servers, roles, schedules and settings; the admin secret is adopted as CURRENT."""
    pg = LocalPostgres().start()
    redis = start_redis_server()
    workdir = Path(pg.workdir) / "bench"
    workdir.mkdir()
    admin_password = secrets.token_urlsafe(24)
    create_roles(pg, admin_password, [*rotated, *raw])
    write_schedules(workdir / "schedules.yaml", pg, rotated)
    key = Fernet.generate_key().decode()
    settings = Settings(
        schedules=workdir / "schedules.yaml",
        database_url=pg.url("postgresql+psycopg").rsplit("/", 1)[0] + "/rotator_history",
        encryption_key=key,  # type: ignore[arg-type]
        var_dir=workdir / "var",
        broker_url=redis.url(0),
        result_backend=redis.url(1),
    )
    runtime = build_runtime(settings)
    try:
        runtime.engine.adopt("pg-admin", Credential(password=admin_password))
    finally:
        runtime.close()
    return Bench(pg, redis, workdir, settings, admin_password, key)


# -- the Celery side --------------------------------------------------------------------


def wait_finished(database: Database, ids: list[str], timeout: float = 600.0) -> None:
    """Until the history database records every run of `ids` as finished."""
    deadline = time.monotonic() + timeout
    query = select(func.count(Run.id)).where(Run.id.in_(ids), Run.status != "running")
    while True:
        with database.session() as session:
            if session.scalar(query) == len(ids):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"runs still unfinished after {timeout:g} s")
        time.sleep(0.02)


def worker_rss_mib(pid: int) -> dict[str, float]:
    """Resident memory of the worker's main process and each pool child, in MiB."""

    def rss(p: int) -> float:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = {"main": rss(pid)}
    found.update({f"child {i}": rss(int(c)) for i, c in enumerate(children, 1)})
    return found


def send_all(app: Any, names: list[str]) -> list[str]:
    ids = [uuid.uuid4().hex for _ in names]
    for name, task_id in zip(names, ids, strict=True):
        app.send_task("rotator.rotate", args=[name], task_id=task_id)
    return ids


def run_celery(bench: Bench, warm: list[str], names: list[str]) -> dict[str, Any]:
    """Warm the worker up, then time N rotations enqueued at once."""
    env = rotator_env(bench.settings, bench.settings.broker_url)
    env["ROTATOR_RESULT_BACKEND"] = bench.settings.result_backend
    database = Database(bench.settings.resolved_database_url)
    worker = CeleryWorker(env, bench.workdir, concurrency=CONCURRENCY).start()
    try:
        with client_app(env) as app:
            wait_finished(database, send_all(app, warm))
            started = time.perf_counter()
            ids = send_all(app, names)
            wait_finished(database, ids)
            wall = time.perf_counter() - started
            results = [app.AsyncResult(i).get(timeout=60) for i in ids]
        assert worker.process is not None
        rss = worker_rss_mib(worker.process.pid)
    finally:
        worker.stop()
        database.dispose()
    failed = [r for r in results if r["outcome"] != "succeeded"]
    if failed:
        raise SystemExit(f"{len(failed)} rotations did not succeed, e.g. {failed[0]}")
    return {"wall": wall, "results": results, "rss": rss}


# -- the raw side -----------------------------------------------------------------------


def raw_rotate(
    bench_info: dict[str, Any], admin: psycopg.Connection[Any], store: psycopg.Connection[Any],
    fernet: Fernet, role: str,
) -> None:  # fmt: skip
    """One rotation by hand: the least work a rotation of one role can do."""
    password = generate_password(PasswordPolicy())
    verifier = admin.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    admin.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(verifier.decode())
        )
    )
    with psycopg.connect(**{**bench_info, "user": role, "password": password}) as conn:
        if conn.execute("SELECT current_user").fetchone() != (role,):
            raise RuntimeError(f"logged in as someone else than {role}")
    value = json.dumps({"engine": "postgres", **bench_info, "username": role, "password": password})
    store.execute(
        "INSERT INTO store (path, version_id, ciphertext) VALUES (%s, %s, %s) "
        "ON CONFLICT (path) DO UPDATE SET version_id = excluded.version_id, "
        "ciphertext = excluded.ciphertext, updated_at = now()",
        (role, uuid.uuid4().hex, fernet.encrypt(value.encode())),
    )


def raw_process(info: dict[str, Any], key: str, jobs: Any, ready: Any, go: Any, done: Any) -> None:
    """One raw process: its admin and store connections open before the clock starts."""
    admin = psycopg.connect(**info, autocommit=True)
    store = psycopg.connect(**{**info, "dbname": "raw_store"}, autocommit=True)
    fernet = Fernet(key.encode())
    ready.put(True)
    go.wait()
    latencies = []
    while (role := jobs.get()) is not None:
        began = time.perf_counter()
        raw_rotate({k: info[k] for k in ("host", "port", "dbname")}, admin, store, fernet, role)
        latencies.append(time.perf_counter() - began)
    admin.close()
    store.close()
    done.put(latencies)


def run_raw(bench: Bench, roles: list[str]) -> dict[str, Any]:
    with psycopg.connect(**bench.conninfo(dbname="raw_store"), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE store (path text PRIMARY KEY, version_id text NOT NULL, "
            "ciphertext bytea NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
        )
    ctx = mp.get_context("spawn")
    jobs, ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
    for role in [*roles, *([None] * CONCURRENCY)]:
        jobs.put(role)
    args = (bench.conninfo(), bench.key, jobs, ready, go, done)
    procs = [ctx.Process(target=raw_process, args=args) for _ in range(CONCURRENCY)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=60)
    started = time.perf_counter()
    go.set()
    latencies = [value for _ in procs for value in done.get(timeout=600)]
    wall = time.perf_counter() - started
    for proc in procs:
        proc.join()
    return {"wall": wall, "latencies": latencies}


# -- profile and report -----------------------------------------------------------------

#: What a rotation does, as (label, module path suffix, function): cumulative time of each.
PARTS = [
    ("Engine.run (the whole rotation)", "rotator/engine.py", "run"),
    ("  lease: hold (acquire, renew thread, release)", "rotator/locks.py", "hold"),
    ("    lease: try_acquire", "rotator/locks.py", "try_acquire"),
    ("    lease: release", "rotator/locks.py", "release"),
    ("  lease: check before/after each step", "rotator/locks.py", "check"),
    ("  history: settle_interrupted", "rotator/engine.py", "settle_interrupted"),
    ("  history: start_run", "rotator/history.py", "start_run"),
    ("  history: record_step", "rotator/history.py", "record_step"),
    ("  history: finish_run", "rotator/history.py", "finish_run"),
    ("  store: read", "rotator/stores/embedded.py", "read"),
    ("  store: put_pending", "rotator/stores/embedded.py", "put_pending"),
    ("  store: promote", "rotator/stores/embedded.py", "promote"),
    ("  target: generate", "rotators/postgres.py", "generate"),
    ("  target: apply (ALTER ROLE)", "rotators/postgres.py", "apply"),
    ("  target: test (login)", "rotators/postgres.py", "test"),
    ("  logging: structlog calls", "structlog/_native.py", "meth"),
    ("  all SQLAlchemy Session.commit", "sqlalchemy/orm/session.py", "commit"),
    ("  all psycopg cursor execute", "psycopg/cursor.py", "execute"),
    ("  all SCRAM/TCP connects (psycopg)", "psycopg/connection.py", "connect"),
]


@dataclass
class StatementCounter:
    statements: int = 0
    transactions: int = 0


def statement_counter(engine: Engine) -> StatementCounter:
    """Counts SQL statements and commits sent to the history database from now on."""
    counter = StatementCounter()

    def on_statement(*_: Any) -> None:
        counter.statements += 1

    def on_commit(*_: Any) -> None:
        counter.transactions += 1

    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine, "commit", on_commit)
    return counter


def print_breakdown(profiler: cProfile.Profile, count: int) -> None:
    """Milliseconds per rotation in each part (parts nest; shares are of Engine.run)."""
    stats: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    totals: dict[str, tuple[float, int]] = {}
    for (path, _, function), (_, calls, _, cumulative, _) in stats.items():
        for label, suffix, name in PARTS:
            if path.endswith(suffix) and function == name:
                seconds, n = totals.get(label, (0.0, 0))
                totals[label] = (seconds + cumulative, n + calls)
    whole = totals.get(PARTS[0][0], (1.0, 1))[0]
    for label, _, _ in PARTS:
        seconds, calls = totals.get(label, (0.0, 0))
        print(f"  {label:48s} {seconds / count * 1e3:6.2f} ms  {seconds / whole:5.1%}  "
              f"{calls / count:5.1f} calls")  # fmt: skip


@contextlib.contextmanager
def quiet_json_logs() -> Iterator[None]:
    """Log as the worker does (JSON lines at info), into /dev/null."""
    with open(os.devnull, "w") as devnull:
        with contextlib.redirect_stderr(devnull):
            configure_logging("json", "info")
        try:
            yield
        finally:
            configure_logging("console", "warning")


def rotate_all(runtime: Runtime, names: list[str]) -> float:
    """Rotate each secret once in this process; seconds per rotation."""
    began = time.perf_counter()
    for name in names:
        result = runtime.engine.run(name)
        assert result.outcome == "succeeded", result
    return (time.perf_counter() - began) / len(names)


def lease_checked_in_memory(lease: SecretLease, confirm: bool = True) -> None:
    """What-if: the renew thread's verdict only, no round trip per check."""
    if lease._lost.is_set():
        raise LockLost(f"the lease of secret {lease.secret!r} was lost to another run")


def what_if(runtime: Runtime, names: list[str]) -> None:
    """The same rotations timed as they are, then with two candidate fixes patched in."""
    print(f"\nwhat-if, {len(names)} rotations per line in one process (no profiler, no Celery):")
    line = "  {:46s} {:6.1f} ms"
    print(line.format("as is (first rotation of each role)", rotate_all(runtime, names) * 1e3))
    print(
        line.format("trust proof already held (second rotation)", rotate_all(runtime, names) * 1e3)
    )
    original = SecretLease.check
    SecretLease.check = lease_checked_in_memory  # type: ignore[method-assign]
    try:
        saved = rotate_all(runtime, names) * 1e3
        print(line.format("... and lease checks without a round trip", saved))
    finally:
        SecretLease.check = original  # type: ignore[method-assign]


def profile(bench: Bench, names: list[str], extra: list[str]) -> None:
    """K rotations in this process under cProfile: the worker's work without Celery."""
    runtime: Runtime = build_runtime(bench.settings)
    try:
        with quiet_json_logs():
            runtime.engine.run(names[0])  # warm: the admin connection and the proof
            counter = statement_counter(runtime.database.engine)
            profiler = cProfile.Profile()
            profiler.enable()
            per_rotation = rotate_all(runtime, names[1:])
            profiler.disable()
            counted = (counter.statements, counter.transactions)
            what_if(runtime, extra)
    finally:
        runtime.close()
    count = len(names) - 1
    print(f"\nprofile: {count} rotations in one process, no Celery, "
          f"{per_rotation * 1e3:.1f} ms each (under cProfile)")  # fmt: skip
    print(
        f"  history DB per rotation: {counted[0] / count:.1f} statements, "
        f"{counted[1] / count:.1f} transactions"
    )
    print_breakdown(profiler, count)


def report(n: int, celery: dict[str, Any], raw: dict[str, Any]) -> None:
    results = celery["results"]
    task_ms = [float(r["timings_ms"]["task"]) for r in results]
    celery_rate, raw_rate = n / celery["wall"], n / raw["wall"]
    c50, c95 = percentiles(task_ms)
    r50, r95 = percentiles([s * 1e3 for s in raw["latencies"]])
    print(f"roles: {n}, concurrency: {CONCURRENCY} processes each side")
    print("history: PostgreSQL (database rotator_history on the target's throwaway server)")
    print(f"celery: {celery_rate:7.1f} rotations/s  ({celery['wall']:.2f} s)  "
          f"task p50 {c50:.1f} ms  p95 {c95:.1f} ms")  # fmt: skip
    print(f"raw:    {raw_rate:7.1f} rotations/s  ({raw['wall']:.2f} s)  "
          f"rotation p50 {r50:.1f} ms  p95 {r95:.1f} ms")  # fmt: skip
    print(f"ratio celery/raw: {celery_rate / raw_rate:.2f}x  (target >= 1.0x, at least 0.8x)")
    steps = ("create", "apply", "test", "finish")
    means = {s: statistics.fmean(r["timings_ms"].get(s, 0) for r in results) for s in steps}
    outside = statistics.fmean(task_ms) - sum(means.values())
    per_slot = celery["wall"] * CONCURRENCY / n * 1e3
    print(
        "celery task, mean ms: "
        + "  ".join(f"{s} {means[s]:.1f}" for s in steps)
        + f"  outside steps {outside:.1f}  task {statistics.fmean(task_ms):.1f}"
        + f"  | wall per task per process {per_slot:.1f}"
    )
    rss = celery["rss"]
    print("worker RSS MiB: " + "  ".join(f"{k} {v:.1f}" for k, v in rss.items())
          + f"  total {sum(rss.values()):.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--roles", type=int, default=200, help="rotations per side (N)")
    parser.add_argument("--profile", type=int, default=40, help="rotations to profile (0: none)")
    args = parser.parse_args()
    n, k = args.roles, args.profile
    warm = [f"warm_{i}" for i in range(WARMUP)]
    rotated = [f"rot_{i}" for i in range(n)]
    profiled = [f"prof_{i}" for i in range(k + 1 if k else 0)]
    extra = [f"whatif_{i}" for i in range(k)]
    raw = [f"raw_{i}" for i in range(n)]
    configure_logging("console", "warning")
    bench = start([*warm, *rotated, *profiled, *extra], raw)
    try:
        load = [os.getloadavg()[0]]
        celery = run_celery(bench, warm, rotated)
        load.append(os.getloadavg()[0])
        raw_figures = run_raw(bench, raw)
        load.append(os.getloadavg()[0])
        print("1-min load average before/after celery/after raw (2 cores, shared): "
              + " / ".join(f"{x:.2f}" for x in load))  # fmt: skip
        report(n, celery, raw_figures)
        if profiled:
            profile(bench, profiled, extra)
    finally:
        bench.redis.stop()
        bench.pg.stop()


if __name__ == "__main__":
    main()
