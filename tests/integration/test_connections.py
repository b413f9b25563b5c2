"""Connections and secrets with a real Valkey: a broker restart is ridden out, a URL that can
never work (TLS to a plain port, a wrong password) fails in seconds with why, and no password
is ever printed (query strings included) or accepted in `orch worker --broker`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator.broker import connect
from orchestrator.embedded import EmbeddedBroker
from tests.integration.conftest import orch

PASSWORD = "Pw-in-query-7731"


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    server = EmbeddedBroker(tmp_path / "restartable")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path / "locked", password=PASSWORD) as server:
        yield server


def _orch_proc(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize("command", [["status"], ["hosts"], ["dlq", "list"]])
def test_a_command_rides_out_a_broker_restart(
    tmp_path: Path, restartable: EmbeddedBroker, command: list[str]
) -> None:
    redis.Redis.from_url(restartable.url).set("orch:marker", "kept")
    restartable.stop()  # the broker restarts: down when the command starts
    proc = _orch_proc("--store", str(tmp_path / "orch.db"), *command, "--broker", restartable.url)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # the command says it waits, then the broker comes back
        assert "is not answering" in first and "retrying for up to 60 s" in first, first
        restartable.start()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, first + err
    assert "the broker is back" in err
    assert redis.Redis.from_url(restartable.url).get("orch:marker") == b"kept"  # same data


def test_a_client_rides_out_a_restart_in_the_middle_of_its_work(
    restartable: EmbeddedBroker, capfd: pytest.CaptureFixture[str]
) -> None:
    client = connect(restartable.url)
    client.set("orch:marker", "kept")
    restartable.stop()
    announced = threading.Event()

    def restart_once_waiting() -> None:
        announced.wait(120)
        restartable.start()

    helper = threading.Thread(target=restart_once_waiting)
    helper.start()
    import orchestrator.outage as outage

    original = outage._stderr
    outage_messages: list[str] = []

    def note(message: str) -> None:
        outage_messages.append(message)
        original(message)
        announced.set()

    client.connection_pool.connection_kwargs["retry"].announce = note
    for conn in client.connection_pool._available_connections:
        conn.retry.announce = note
    try:
        assert client.get("orch:marker") == b"kept"
    finally:
        announced.set()
        helper.join(timeout=120)
    assert any("not answering" in m for m in outage_messages)


def test_broker_outage_zero_gives_up_at_once(tmp_path: Path, restartable: EmbeddedBroker) -> None:
    restartable.stop()
    done = orch("--store", str(tmp_path / "orch.db"), "--broker-outage", "0", "status",
                "--broker", restartable.url, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "cannot reach the broker" in done.stderr
    bad = orch("--store", str(tmp_path / "orch.db"), "status", "--broker", restartable.url,
               env={"ORCH_BROKER_OUTAGE_S": "soon"}, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "--broker-outage" in bad.stderr and "soon" in bad.stderr


def _worker_config(tmp_path: Path, llama_bin: Path) -> Path:
    config = tmp_path / "w.yaml"
    config.write_text(
        f"host: box\nengines:\n  llama-bench:\n    backends:\n      cpu: {llama_bin}/llama-bench\n"
        "models: {}\nthreads: 1\ndisturbance: {enabled: false}\n"
    )
    return config


def test_tls_to_a_plain_port_fails_in_seconds_with_why(
    tmp_path: Path, broker: str, llama_bin: Path
) -> None:
    tls = broker.replace("redis://", "rediss://")
    coordinator = orch("--store", str(tmp_path / "orch.db"), "status", "--broker", tls,
                       timeout=120)  # fmt: skip
    assert coordinator.returncode == 2, coordinator.stderr
    assert "speaks plain Redis, not TLS: use redis://" in coordinator.stderr
    worker = orch("worker", "--config", str(_worker_config(tmp_path, llama_bin)),
                  env={"ORCH_BROKER_URL": tls}, timeout=120)  # fmt: skip
    assert worker.returncode == 2, worker.stdout + worker.stderr
    assert "speaks plain Redis, not TLS" in worker.stderr
    assert "Traceback" not in worker.stdout + worker.stderr


def test_a_wrong_password_fails_with_why_and_is_never_printed(
    tmp_path: Path, locked: EmbeddedBroker, llama_bin: Path
) -> None:
    wrong = f"redis://127.0.0.1:{locked.port}/0?password=Wrong-pw-5521"
    coordinator = orch("--store", str(tmp_path / "orch.db"), "status", "--broker", wrong,
                       timeout=120)  # fmt: skip
    worker = orch("worker", "--config", str(_worker_config(tmp_path, llama_bin)),
                  env={"ORCH_BROKER_URL": wrong}, timeout=120)  # fmt: skip
    for done in (coordinator, worker):
        assert done.returncode == 2, done.stderr
        assert "refused the credentials" in done.stderr
        assert "Wrong-pw-5521" not in done.stdout + done.stderr
        assert ":***@127.0.0.1" in done.stderr  # the query password, moved and masked


def test_a_password_in_the_query_string_works_and_is_never_printed(
    tmp_path: Path, locked: EmbeddedBroker, llama_bin: Path
) -> None:
    url = f"redis://127.0.0.1:{locked.port}/0?password={PASSWORD}"
    status = orch("--store", str(tmp_path / "orch.db"), "status", "--broker", url, timeout=120)
    assert status.returncode == 0, status.stderr
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "worker", "--config",
             str(_worker_config(tmp_path, llama_bin))],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "ORCH_BROKER_URL": url},
        )  # fmt: skip
    try:
        client = connect(url)
        for _ in range(600):  # the agent registers (kombu could not parse ?password= before)
            if client.get("orch:inventory:box") or worker.poll() is not None:
                break
            threading.Event().wait(0.1)
        assert client.get("orch:inventory:box"), log.read_text()[-3000:]
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert PASSWORD not in log.read_text()
    assert PASSWORD not in status.stdout + status.stderr


def test_orch_worker_refuses_a_password_in_its_argv(tmp_path: Path, llama_bin: Path) -> None:
    config = str(_worker_config(tmp_path, llama_bin))
    for url in (
        "redis://:Argv-pw-0042@127.0.0.1:1/0",
        "redis://127.0.0.1:1/0?password=Argv-pw-0042",
    ):
        done = orch("worker", "--config", config, "--broker", url, timeout=120)
        assert done.returncode == 2
        assert "ORCH_BROKER_URL" in done.stderr and "--broker-password-file" in done.stderr
        assert "Argv-pw-0042" not in done.stdout + done.stderr
    forced = orch("worker", "--config", config, "--broker", "redis://:Argv-pw-0042@127.0.0.1:1/0",
                  "--allow-password-in-argv", timeout=120)  # fmt: skip
    assert forced.returncode != 0 and "ps" not in forced.stderr.split("error:")[-1]
    assert "Argv-pw-0042" not in forced.stdout + forced.stderr


def test_the_password_file_option_gives_the_worker_its_password(
    tmp_path: Path, locked: EmbeddedBroker, llama_bin: Path
) -> None:
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "worker", "--config",
             str(_worker_config(tmp_path, llama_bin)), "--broker",
             f"redis://127.0.0.1:{locked.port}/0", "--broker-password-file", str(secret)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        client = connect(locked.url)
        for _ in range(600):
            if client.get("orch:inventory:box") or worker.poll() is not None:
                break
            threading.Event().wait(0.1)
        assert client.get("orch:inventory:box"), log.read_text()[-3000:]
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert PASSWORD not in log.read_text()
