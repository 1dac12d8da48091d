"""Beat with 10,000 secrets: YamlScheduler against Celery's own PersistentScheduler.

Run by hand from the repository root: `.venv/bin/python -m bench.scheduler [--secrets N]`.

A schedules.yaml of N secrets (a mix of `every:`, `cron:` and `cron:` with a `window:`,
embedded store, postgres targets without an admin: validation does no network I/O) is
generated into a temporary directory. Figures:

- load+validate: `load_plan` of that file (first call, then the best of three);
- YamlScheduler: a history database holding a recent success for most secrets (the
  rest are cron secrets never rotated, not due before their next cron time), the
  scheduler built in-process on a real Celery app whose broker is a throwaway
  redis-server (so it leads through a Redis lock and could send), then the tick time
  over many warm ticks (min/median) and the refresh tick (bulk history read, slots
  recomputed where history changed, done every `refresh_interval`) over a few;
- Celery's PersistentScheduler holding the same N entries in `beat_schedule`
  (`schedule(30d)` or `crontab`), its tick time the same way.
Each scheduler runs in a process of its own so its RSS is its own. No entry is due
during the timed ticks, so a tick measures scheduling, not sending.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

#: (every, cron, window) per kind of secret, cycled through the file.
KINDS: list[tuple[str | None, str | None, str | None]] = [
    ("30d", None, None),
    ("7d", None, "2h"),
    (None, "0 3 * * 1", None),
    (None, "30 2 1 * *", "4h"),
    (None, "15 4 * * *", None),
]
TIMEZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"]
#: Of every this many secrets, one cron secret has never been rotated.
NEVER_ROTATED_EVERY = 10


def secret_name(i: int) -> str:
    return f"svc-{i:05d}"


def kind_of(i: int) -> tuple[str | None, str | None, str | None]:
    return KINDS[i % len(KINDS)]


def never_rotated(i: int) -> bool:
    """A cron secret with no success yet: due at its next cron time, not now."""
    return kind_of(i)[1] is not None and i % NEVER_ROTATED_EVERY == 2


def write_schedules(path: Path, count: int) -> None:
    lines = ["version: 1", "stores:", "  local: {type: embedded}", "secrets:"]
    for i in range(count):
        every, cron, window = kind_of(i)
        lines += [
            f"  {secret_name(i)}:",
            "    rotator: postgres-password",
            "    store: local",
            f"    every: {every}" if every else f'    cron: "{cron}"',
        ]
        if cron:
            lines.append(f"    timezone: {TIMEZONES[i % len(TIMEZONES)]}")
        if window:
            lines.append(f"    window: {window}")
        lines.append(f"    target: {{host: db{i % 40}.internal, port: 5432, username: u{i}}}")
    path.write_text("\n".join(lines) + "\n")


def timed(action: Callable[[], Any], repeat: int) -> list[float]:
    """Seconds of each of `repeat` calls."""
    spent = []
    for _ in range(repeat):
        began = time.perf_counter()
        action()
        spent.append(time.perf_counter() - began)
    return spent


def rss_mib() -> tuple[float, float]:
    """This process's resident memory now and at its peak, in MiB."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found["VmRSS"], found["VmHWM"]


def fill_history(url: str, count: int) -> int:
    """A recent success for every secret but the never-rotated ones; returns how many.

    `every:` secrets succeeded an hour ago (due in days); cron secrets a minute ago (due
    at their next cron time, which fires at most daily: not during the timed ticks).
    """
    from sqlalchemy import insert

    from rotator.history import Database, Run

    database = Database(url)
    database.upgrade()
    now = datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4().hex,
            "secret": secret_name(i),
            "trigger": "schedule",
            "slot": None,
            "status": "succeeded",
            "started_at": now - timedelta(minutes=1 if kind_of(i)[1] else 60, seconds=2),
            "finished_at": now - timedelta(minutes=1 if kind_of(i)[1] else 60),
            "version_id": uuid.uuid4().hex,
            "error": None,
        }
        for i in range(count)
        if not never_rotated(i)
    ]
    with database.session() as session:
        session.execute(insert(Run), rows)
    database.dispose()
    return len(rows)


def celery_app(broker: str, workdir: Path) -> Any:
    """A real app configured as the product's, on the throwaway Redis."""
    from celery import Celery

    from rotator.celery import celery_config
    from rotator.config import Settings

    settings = Settings(broker_url=broker, result_backend=broker, var_dir=workdir / "var")
    app = Celery("rotator-bench", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def settings_env(workdir: Path, history_url: str, broker: str) -> dict[str, str]:
    return {
        "ROTATOR_SCHEDULES": str(workdir / "schedules.yaml"),
        "ROTATOR_DATABASE_URL": history_url,
        "ROTATOR_VAR_DIR": str(workdir / "var"),
        "ROTATOR_BROKER_URL": broker,
        "ROTATOR_RESULT_BACKEND": broker,
        "ROTATOR_LOG_FORMAT": "console",
        "ROTATOR_LOG_LEVEL": "warning",
    }


def tick_figures(tick: Callable[[], Any], ticks: int, refresh: Callable[[], Any] | None,
                 refreshes: int) -> dict[str, Any]:  # fmt: skip
    """First tick, then warm ticks and (for YamlScheduler) forced refresh ticks."""
    first = timed(tick, 1)[0]
    warm = timed(tick, ticks)
    figures = {"first": first, "warm_min": min(warm), "warm_median": statistics.median(warm)}
    if refresh is not None:
        spent = timed(refresh, refreshes)
        figures.update(refresh_min=min(spent), refresh_median=statistics.median(spent))
    return figures


def yaml_child(env: dict[str, str], ticks: int, refreshes: int, out: Any) -> None:
    """In a process of its own: load+validate, then YamlScheduler's ticks and RSS."""
    os.environ.update(env)
    from rotator.beat import YamlScheduler
    from rotator.logging import configure_logging
    from rotator.schedule import load_plan

    configure_logging("console", "warning")
    base = rss_mib()[0]
    loads = timed(lambda: load_plan(env["ROTATOR_SCHEDULES"]), 3)
    app = celery_app(env["ROTATOR_BROKER_URL"], Path(env["ROTATOR_VAR_DIR"]).parent)
    built = time.perf_counter()
    scheduler = YamlScheduler(app=app)
    built = time.perf_counter() - built

    def refresh() -> None:
        scheduler._next_refresh = 0.0
        scheduler.tick()

    figures = tick_figures(scheduler.tick, ticks, refresh, refreshes)
    figures.update(load_first=loads[0], load_best=min(loads[1:]), build=built, base_rss=base)
    figures.update(zip(("rss", "peak_rss"), rss_mib(), strict=True))
    figures["sent"] = len(scheduler._sent)
    figures["slots"] = len(scheduler._slots)
    scheduler.close()
    out.put(figures)


def celery_entries(count: int) -> dict[str, dict[str, Any]]:
    """The same secrets as Celery beat_schedule entries (crontab in the app's timezone)."""
    from celery.schedules import crontab, schedule

    from rotator.durations import parse_duration

    entries = {}
    for i in range(count):
        every, cron, _ = kind_of(i)
        if every:
            when: Any = schedule(parse_duration(every))
        else:
            minute, hour, day, month, weekday = (cron or "").split()
            when = crontab(minute, hour, weekday, day, month)
        entries[secret_name(i)] = {
            "task": "rotator.rotate",
            "schedule": when,
            "args": (secret_name(i),),
            "kwargs": {"trigger": "schedule"},
        }
    return entries


def celery_child(env: dict[str, str], count: int, ticks: int, out: Any) -> None:
    """In a process of its own: Celery's PersistentScheduler with `count` entries."""
    from celery.beat import PersistentScheduler

    workdir = Path(env["ROTATOR_VAR_DIR"]).parent
    base = rss_mib()[0]
    app = celery_app(env["ROTATOR_BROKER_URL"], workdir)
    app.conf.beat_schedule = celery_entries(count)
    built = time.perf_counter()
    scheduler = PersistentScheduler(app=app, schedule_filename=str(workdir / "celerybeat"))
    built = time.perf_counter() - built
    figures = tick_figures(scheduler.tick, ticks, None, 0)
    figures.update(build=built, base_rss=base)
    figures.update(zip(("rss", "peak_rss"), rss_mib(), strict=True))
    figures["entries"] = len(scheduler.schedule)
    scheduler.close()
    out.put(figures)


def in_child(target: Callable[..., None], *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, out))
    proc.start()
    figures: dict[str, Any] = out.get(timeout=900)
    proc.join()
    return figures


def start_history(kind: str, workdir: Path) -> tuple[str, Callable[[], None]]:
    """The history database URL and how to stop its server."""
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'history.db'}", lambda: None
    from rotator.devservers import LocalPostgres

    pg = LocalPostgres().start()
    return pg.url("postgresql+psycopg"), pg.stop


def report(count: int, successes: int, yaml: dict[str, Any], cel: dict[str, Any]) -> None:
    ms = 1e3
    print(f"secrets: {count} ({successes} with a recent success in history)")
    print(f"load+validate: first {yaml['load_first']:.2f} s, best of 2 more "
          f"{yaml['load_best']:.2f} s  (target <= 2 s)")  # fmt: skip
    print(f"{'':24s} {'build':>9s} {'1st tick':>9s} {'tick min':>9s} {'tick med':>9s} "
          f"{'RSS base':>9s} {'RSS':>8s} {'peak':>8s}")  # fmt: skip
    for name, f in (("YamlScheduler", yaml), ("Celery PersistentScheduler", cel)):
        print(f"{name:26s} {f['build']:6.2f} s {f['first'] * ms:6.1f} ms"
              f" {f['warm_min'] * ms:6.3f} ms {f['warm_median'] * ms:6.3f} ms"
              f" {f['base_rss']:6.1f} MiB {f['rss']:5.1f} MiB"
              f" {f['peak_rss']:5.1f} MiB")  # fmt: skip
    print(f"YamlScheduler refresh tick (bulk history read, slots recomputed where history "
          f"changed; every refresh_interval): min {yaml['refresh_min']:.2f} s, "
          f"median {yaml['refresh_median']:.2f} s")  # fmt: skip
    ratio = cel["warm_median"] / yaml["warm_median"]
    print(f"warm tick, Celery/Yaml median: {ratio:.1f}x  (target: YamlScheduler no slower)")
    print(f"sent during the timed ticks: YamlScheduler {yaml['sent']}, slots {yaml['slots']}, "
          f"Celery entries {cel['entries']}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--secrets", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=500, help="warm ticks timed")
    parser.add_argument("--refreshes", type=int, default=5, help="refresh ticks timed")
    parser.add_argument("--history", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    from tests.services.redis import start_redis_server

    workdir = Path(tempfile.mkdtemp(prefix="rotator-bench-"))
    write_schedules(workdir / "schedules.yaml", args.secrets)
    redis = start_redis_server()
    history_url, stop_history = start_history(args.history, workdir)
    try:
        successes = fill_history(history_url, args.secrets)
        env = settings_env(workdir, history_url, redis.url(0))
        load = [os.getloadavg()[0]]
        yaml = in_child(yaml_child, env, args.ticks, args.refreshes)
        load.append(os.getloadavg()[0])
        cel = in_child(celery_child, env, args.secrets, args.ticks)
        load.append(os.getloadavg()[0])
        print(
            f"history: {args.history}; 1-min load average before/after yaml/after celery "
            f"(2 cores, shared): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
        )
        report(args.secrets, successes, yaml, cel)
        import redis as redis_py

        client = redis_py.Redis.from_url(redis.url(0))
        print(f"messages in the broker's queue afterwards: {client.llen('celery')}")
        client.close()
    finally:
        stop_history()
        redis.stop()


if __name__ == "__main__":
    main()
