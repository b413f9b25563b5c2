"""The agent's Celery app uses orch's checking transport (worker/transport.py) and keeps TLS.

kombu turns TLS on for a bare `rediss://` by the transport's name, which a transport class
replaces (kombu/connection.py `_init_params`, kombu 5.7.0): the agent must say it itself."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from worker.agent import Agent
from worker.config import WorkerConfig


@pytest.fixture
def config(tmp_path: Path) -> WorkerConfig:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    return WorkerConfig.model_validate({
        "host": "box", "models": {"tiny:q8_0": model},
        "engines": {"llama-bench": {"backends": {"cpu": "/bin/true"}}},
    })  # fmt: skip


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:1/0", False),
        ("rediss://:pw@127.0.0.1:1/0", {"ssl_cert_reqs": ssl.CERT_REQUIRED}),
        ("rediss://127.0.0.1:1/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem",
         {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"}),
    ],
)  # fmt: skip
def test_the_consumer_checks_messages_and_keeps_tls(
    config: WorkerConfig, url: str, expected: object
) -> None:
    connection = Agent(config, url).app.connection_for_write()
    assert connection.transport.Channel.__module__ == "worker.transport"
    assert connection.ssl == expected
