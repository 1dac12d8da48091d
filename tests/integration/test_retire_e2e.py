"""End to end: `rotator run` rotates an adopted API key at once, then retires the old key
after the grace period through beat and a real worker process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from rotator.credential import Credential
from rotator.history import Retirement, Run
from tests.conftest import RuntimeFactory, SchedulesWriter
from tests.services.celery_procs import rotator_env, worker_env
from tests.services.keyservice import KeyService

pytestmark = pytest.mark.integration


@pytest.fixture
def history_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'history.db'}"


def test_beat_and_a_worker_rotate_on_adopt_then_revoke_the_old_key_after_grace(
    keyservice: KeyService,
    write_schedules: SchedulesWriter,
    make_runtime: RuntimeFactory,
    tmp_path: Path,
) -> None:
    target = {
        "create": {
            "url": f"{keyservice.url}/keys",
            "body": {"name": "admin-{request_id}", "admin": True},
            "key_pointer": "/key/secret",
            "key_id_pointer": "/key/id",
        },
        "verify": {"url": f"{keyservice.url}/whoami"},
        "revoke": {"url": f"{keyservice.url}/keys/{{key_id}}"},
    }
    entry = {
        "rotator": "api-key",
        "store": "local",
        "every": "1h",
        "window": "1s",
        "grace": "3s",
        "target": target,
    }
    text = "version: 1\nstores: {local: {type: embedded}}\nsecrets:\n"
    runtime = make_runtime(write_schedules(text + f"  provider-admin: {json.dumps(entry)}\n"))
    seed = keyservice.issue("bootstrap", admin=True)
    runtime.engine.adopt("provider-admin", Credential(api_key=seed.secret, key_id=seed.id))

    log = tmp_path / "run.log"
    env = worker_env(rotator_env(runtime.settings, None))
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rotator.cli", "run", "--max-interval", "0.5", "-c", "1"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while keyservice.works(seed.secret):
            assert process.poll() is None, log.read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    with runtime.database.session() as session:
        runs = list(session.scalars(select(Run).where(Run.secret == "provider-admin")))
        (retirement,) = session.scalars(select(Retirement))
    rotation = next(r for r in runs if r.status == "succeeded")
    assert rotation.trigger == "schedule" and (rotation.slot or "").startswith("adopted:")
    assert retirement.status == "retired"
    assert retirement.retired_at is not None and rotation.finished_at is not None
    assert (retirement.retired_at - rotation.finished_at).total_seconds() >= 3  # after grace
    steps = [(s.step, s.status) for s in runtime.history.steps(rotation.id)]
    assert steps[-1] == ("retire", "ok")
    (current,) = [k for k in keyservice.keys.values() if keyservice.works(k.secret)]
    assert current.id != seed.id
    assert seed.secret not in log.read_text(errors="replace")
