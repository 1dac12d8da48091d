"""moto's ThreadedMotoServer on a free loopback port: AWS Secrets Manager over real HTTP.

boto3 talks to it like to AWS (signed requests, JSON error bodies), so the store
code under test is the code that runs against AWS. The test process gets dummy
credentials through the environment, the way boto3's default chain reads them,
so no real AWS account is ever reached.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from rotator.devservers import free_port

REGION = "us-east-1"
DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class MotoServer:
    """A running moto server and the environment it replaced."""

    server: ThreadedMotoServer
    port: int
    saved_env: dict[str, str | None] = field(default_factory=dict)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """A plain boto3 client, as an application reading its secret would have."""
        return boto3.session.Session(region_name=REGION).client(
            "secretsmanager", endpoint_url=self.endpoint_url
        )

    def stop(self) -> None:
        self.server.stop()
        for key, value in self.saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_moto_server() -> MotoServer:
    """Start moto on 127.0.0.1 and point the default credential chain at dummy values."""
    saved = {key: os.environ.get(key) for key in DUMMY_ENV}
    os.environ.update(DUMMY_ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return MotoServer(server, port, saved)


def unique_secret_name(prefix: str = "rotator-test") -> str:
    """A secret name no other test uses (moto's state lives as long as the server)."""
    return f"{prefix}/{secrets.token_hex(6)}"
