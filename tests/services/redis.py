"""A Redis server for tests.

In order: `ROTATOR_TEST_REDIS_URL`, a testcontainers RedisContainer when Docker
answers, else a throwaway `redis-server` on a free loopback port with no
persistence, in a temporary directory, stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from rotator.devservers import free_port
from tests.services.docker import docker_available


@dataclass
class RedisServer:
    """A running Redis; `url(db)` names one of its numbered databases."""

    host: str
    port: int
    base_url: str | None = None
    process: subprocess.Popen[bytes] | None = None
    workdir: str | None = None
    container: Any = None
    _next_db: int = field(default=1)

    def url(self, db: int = 0) -> str:
        if self.base_url is not None:
            return self.base_url.rsplit("/", 1)[0] + f"/{db}" if db else self.base_url
        return f"redis://{self.host}:{self.port}/{db}"

    def fresh_db(self) -> str:
        """A URL of a database no other test of the session used (16 by default; wraps)."""
        db = self._next_db
        self._next_db = self._next_db % 15 + 1
        client = redis.Redis.from_url(self.url(db))
        try:
            client.flushdb()
        finally:
            client.close()
        return self.url(db)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self.container is not None:
            self.container.stop()


def _wait_ready(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
    finally:
        client.close()


def start_redis_server() -> RedisServer:
    url = os.environ.get("ROTATOR_TEST_REDIS_URL")
    if url:
        parsed = redis.connection.parse_url(url)
        return RedisServer(parsed.get("host", "127.0.0.1"), parsed.get("port", 6379), url)
    if docker_available():
        from testcontainers.redis import RedisContainer

        container = RedisContainer("redis:7").start()
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(6379))
        _wait_ready(f"redis://{host}:{port}/0")
        return RedisServer(host, port, container=container)
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    workdir = tempfile.mkdtemp(prefix="rotator-redis-")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", workdir,
            "--logfile", os.path.join(workdir, "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = RedisServer("127.0.0.1", port, process=process, workdir=workdir)
    try:
        _wait_ready(server.url())
    except BaseException:
        server.stop()
        raise
    return server
