"""Whether a Docker engine answers, so testcontainers can be used."""

from __future__ import annotations

import functools
import os


@functools.cache
def docker_available() -> bool:
    if os.environ.get("ROTATOR_TEST_NO_DOCKER"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False
