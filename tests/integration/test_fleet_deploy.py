"""`orch fleet` end to end against a real OpenSSH server on this machine.

The box is this machine reached over SSH on a loopback port (a second inventory entry reaches
it with a key the server does not know). The deploy installs orch offline from a wheelhouse
that scripts/test prepares, so nothing leaves the machine; the broker has a password.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import yaml

from orchestrator.broker import read_inventories
from orchestrator.embedded import EmbeddedBroker, free_port
from orchestrator.store import Store
from tests.integration.conftest import orch
from tests.integration.netns import NetNs, netns  # noqa: F401  (fixture)
from tests.integration.sshd import SshServer, sshd, start_sshd  # noqa: F401  (fixture)

PASSWORD = "fleet-Test-pw-7e1"


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(tmp_path / "broker", password=PASSWORD) as server:
        yield server


@pytest.fixture
def wheelhouse() -> Path:
    folder = os.environ.get("ORCH_TEST_WHEELHOUSE")
    if not folder or not Path(folder).is_dir():
        why = os.environ.get("ORCH_TEST_WHEELHOUSE_WHY", "scripts/test prepares one")
        pytest.skip(f"no wheelhouse for the box's offline install (ORCH_TEST_WHEELHOUSE): {why}")
    return Path(folder)


def _inventory(
    tmp_path: Path,
    server: SshServer,
    broker: EmbeddedBroker,
    wheelhouse: Path,
    llama_bin: Path,
    models: dict[str, Path],
    hosts: dict[str, dict[str, Any]],
    name: str = "fleet.yaml",
) -> Path:
    password = tmp_path / "redis-password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    data = {
        "broker": {
            "url": f"redis://{broker.bind[0]}:{broker.port}/0",
            "password_file": str(password),
        },
        "known_hosts": str(server.known_hosts),
        "wheelhouse": str(wheelhouse),
        # The supervisor loop on every box: never a real systemd unit on this machine.
        "defaults": {"port": server.port, "key": str(server.client_key), "service": "supervisor"},
        "worker_template": {
            "engines": {"llama-bench": {"backends": {"cpu": str(llama_bin / "llama-bench")}}},
            "models": {"tiny:q8_0": str(models["tiny:q8_0"])},
            "threads": 1,
        },
        "hosts": {
            host: {
                "address": "127.0.0.1",
                "deploy_dir": str(tmp_path / host),
                **extra,
                # The agents' cache and state in the test's folder, not the real ~/.cache/orch.
                "env": {"ORCH_HOME": str(tmp_path / "orch-home" / host), **extra.get("env", {})},
            }
            for host, extra in hosts.items()
        },
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _row(stdout: str, host: str) -> str:
    return next(line for line in stdout.splitlines() if line.split()[:1] == [host])


def _run_tiny_matrix(tmp_path: Path, campaign: str, hosts: list[str], broker: str) -> list[Any]:
    """Submit one tiny llama-bench job per host, wait for them; the store's rows."""
    matrix = tmp_path / f"{campaign}.yaml"
    matrix.write_text(
        f"campaign: {campaign}\nrepetitions: 2\nworkload: {{prompt_tokens: 16, gen_tokens: 8}}\n"
        f"hosts: [{', '.join(hosts)}]\nmatrix: {{model: ['tiny:q8_0'], context: [256]}}\n"
    )
    store_path = tmp_path / "orch.db"
    done = orch("--store", str(store_path), "submit", str(matrix), "--broker", broker,
                "--wait", "--timeout", "180")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    return list(Store.open(store_path).campaign_jobs(campaign))


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_deploy_runs_a_job_then_redeploy_is_a_noop_and_stop_ends_the_agent(
    tmp_path: Path,
    sshd: SshServer,  # noqa: F811
    secure_broker: EmbeddedBroker,
    wheelhouse: Path,
    llama_bin: Path,
    tiny_models: dict[str, Path],
) -> None:
    box_home: dict[str, Any] = {}
    hosts = {
        "box": box_home,
        "wrong-key": {"key": str(sshd.other_key)},
        "old-box": {"python": "/nonexistent/python3"},
    }
    inventory = _inventory(tmp_path, sshd, secure_broker, wheelhouse, llama_bin, tiny_models, hosts)
    client = redis.Redis.from_url(secure_broker.url)
    try:
        # 1. One deploy for all three: the good box comes up, the others say why they did not.
        first = orch("fleet", "deploy", str(inventory), timeout=600)
        output = first.stdout + first.stderr
        assert first.returncode == 1, output  # a host failed
        assert PASSWORD not in output
        box_row = _row(first.stdout, "box")
        assert "changed" in box_row and "registered" in box_row, output
        assert box_row.split()[1] == "supervisor"  # as the inventory says, systemd or not
        assert "installed orch" in box_row and "started" in box_row
        wrong = _row(first.stdout, "wrong-key")
        assert "FAILED: auth failed" in wrong and str(sshd.other_key) in wrong, output
        old = _row(first.stdout, "old-box")
        assert "FAILED: no Python 3.11" in old and "/nonexistent/python3" in old, output

        # The agent runs from the box's venv and registered its inventory on the broker.
        agent = read_inventories(client)["box"]
        process = psutil.Process(agent.pid)
        assert str(tmp_path / "box" / "venv") in " ".join(process.cmdline())
        assert process.environ()["ORCH_HOME"] == str(tmp_path / "orch-home" / "box")
        assert agent.models == ["tiny:q8_0"]
        for secret_file in ("worker.yaml", "agent.env"):
            mode_bits = stat.S_IMODE((tmp_path / "box" / secret_file).stat().st_mode)
            assert mode_bits == 0o600, secret_file
        for failed in ("wrong-key", "old-box"):  # nothing was written on a refused box
            assert not (tmp_path / failed).exists()

        # 2. A submitted job runs on the deployed agent and its result lands in the store.
        (row,) = _run_tiny_matrix(tmp_path, "fleet-deploy", ["box"], secure_broker.url)
        assert row.result is not None and row.result.status.value == "ok", row.result
        assert row.result.host == "box" and {m.test for m in row.result.measurements} == {
            "pp",
            "tg",
        }

        # 3. Deploying again changes nothing: same agent process, same instance.
        again = orch("fleet", "deploy", str(inventory), "--hosts", "box", timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "unchanged" in _row(again.stdout, "box") and "nothing to do" in again.stdout
        assert read_inventories(client)["box"].instance_id == agent.instance_id

        # 4. A config the box rejects leaves the running agent and its config as they were.
        before = (tmp_path / "box" / "worker.yaml").read_bytes()
        broken = _inventory(
            tmp_path, sshd, secure_broker, wheelhouse, llama_bin,
            {"tiny:q8_0": tmp_path / "missing.gguf"}, {"box": box_home}, name="broken.yaml",
        )  # fmt: skip
        bad = orch("fleet", "deploy", str(broken), timeout=300)
        assert bad.returncode == 1
        bad_row = _row(bad.stdout, "box")
        assert "FAILED: bad worker config" in bad_row and "missing.gguf does not exist" in bad_row
        assert f"{broken}:" in bad_row  # names the inventory line of the host
        assert (tmp_path / "box" / "worker.yaml").read_bytes() == before
        assert process.is_running()

        # 5. status and logs show the agent, never the password.
        status = orch("fleet", "status", str(inventory), "--hosts", "box")
        assert status.returncode == 0, status.stderr
        assert "running" in _row(status.stdout, "box") and "online" in _row(status.stdout, "box")
        logs = orch("fleet", "logs", "box", str(inventory), "-n", "200")
        assert logs.returncode == 0, logs.stderr
        assert "consumes orch.box.default" in logs.stdout
        for text in (status.stdout, status.stderr, logs.stdout):
            assert PASSWORD not in text

        # 6. restart gives a new agent process, which registers in its turn.
        restarted = orch("fleet", "restart", str(inventory), "--hosts", "box")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "restarted" in _row(restarted.stdout, "box")
        deadline = time.monotonic() + 60
        while (new := read_inventories(client)["box"]).instance_id == agent.instance_id:
            assert time.monotonic() < deadline, "the restarted agent did not register"
            time.sleep(0.2)
        assert _gone(agent.pid) and new.pid != agent.pid

        # 7. stop ends the agent; status says so.
        stopped = orch("fleet", "stop", str(inventory), "--hosts", "box")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "stopped" in _row(stopped.stdout, "box")
        deadline = time.monotonic() + 30
        while not _gone(new.pid):
            assert time.monotonic() < deadline, "the agent process outlived `orch fleet stop`"
            time.sleep(0.1)
        after = orch("fleet", "status", str(inventory), "--hosts", "box")
        assert "stopped" in _row(after.stdout, "box")
    finally:
        _kill_leftovers(tmp_path / "box" / "agent.pid")
        client.close()


def _kill_leftovers(pidfile: Path) -> None:
    """Whatever happened above, leave no agent running (its process group)."""
    try:
        os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


def test_facts_and_deploy_name_what_is_wrong_with_each_box(
    tmp_path: Path,
    sshd: SshServer,  # noqa: F811
    secure_broker: EmbeddedBroker,
    wheelhouse: Path,
    llama_bin: Path,
    tiny_models: dict[str, Path],
) -> None:
    closed_port = free_port()  # nothing listens there
    strange = tmp_path / "strange_known_hosts"
    strange.write_text("")
    hosts = {
        "box": {},
        "down": {"port": closed_port},
        "full": {},
    }
    inventory = _inventory(tmp_path, sshd, secure_broker, wheelhouse, llama_bin, tiny_models, hosts)
    facts = orch("fleet", "facts", str(inventory))
    assert facts.returncode == 1  # `down` cannot be reached
    box = _row(facts.stdout, "box")
    assert str(os.cpu_count()) in box.split(), facts.stdout
    assert re.search(r" 3\.1[1-9]\.\d+ ", box), facts.stdout  # the box's python3
    assert "FAILED: unreachable" in _row(facts.stdout, "down")
    assert f"127.0.0.1:{closed_port}" in facts.stderr

    # An unknown host key is refused, not added.
    data = yaml.safe_load(inventory.read_text())
    data["known_hosts"] = str(strange)
    data["min_free_mb"] = 10**9  # more than any disk here: the install must be refused
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    refused = orch("fleet", "facts", str(other), "--hosts", "box")
    assert refused.returncode == 1
    assert "FAILED: unknown host key" in _row(refused.stdout, "box")
    assert strange.read_text() == ""
    # A host key other than the one on record (a reinstalled box, or someone in between).
    key_type, key_b64 = sshd.other_key.with_suffix(".pub").read_text().split()[:2]
    strange.write_text(f"[127.0.0.1]:{sshd.port} {key_type} {key_b64}\n")
    changed = orch("fleet", "facts", str(other), "--hosts", "box")
    assert changed.returncode == 1
    assert "FAILED: host key changed" in _row(changed.stdout, "box"), changed.stdout

    data["known_hosts"] = str(sshd.known_hosts)
    other.write_text(yaml.safe_dump(data))
    full = orch("fleet", "deploy", str(other), "--hosts", "full")
    assert full.returncode == 1
    row = _row(full.stdout, "full")
    assert "FAILED: disk full" in row and "min_free_mb" in row, full.stdout
    assert not (tmp_path / "full").exists()  # nothing was written on the refused box


def test_two_boxes_one_in_its_own_network_namespace_deploy_at_once_and_both_run_jobs(
    tmp_path: Path,
    netns: NetNs,  # noqa: F811
    wheelhouse: Path,
    llama_bin: Path,
    tiny_models: dict[str, Path],
) -> None:
    """The second box has its own network stack: it reaches sshd's and the broker's
    addresses on the veth pair only, as a box on a LAN would."""
    known_hosts = tmp_path / "known_hosts"
    local = start_sshd(tmp_path / "ssh", known_hosts)
    remote = start_sshd(tmp_path / "ssh", known_hosts, address=netns.ns_ip, netns=netns.name)
    broker = EmbeddedBroker(tmp_path / "broker", password=PASSWORD, bind=(netns.host_ip,))
    broker.start()
    try:
        hosts = {
            "box-a": {"port": local.port},
            "box-b": {"address": netns.ns_ip, "port": remote.port},
        }
        inventory = _inventory(tmp_path, local, broker, wheelhouse, llama_bin, tiny_models, hosts)
        deployed = orch("fleet", "deploy", str(inventory), timeout=600)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        for host in hosts:
            row = _row(deployed.stdout, host)
            assert "changed" in row and "registered" in row, deployed.stdout
        client = redis.Redis.from_url(broker.url)
        agents = read_inventories(client)
        client.close()
        in_ns = os.stat(f"/run/netns/{netns.name}").st_ino
        assert os.stat(f"/proc/{agents['box-b'].pid}/ns/net").st_ino == in_ns
        assert os.stat(f"/proc/{agents['box-a'].pid}/ns/net").st_ino != in_ns

        rows = _run_tiny_matrix(tmp_path, "two-boxes", list(hosts), broker.url)
        assert sorted(
            (r.spec.host, r.result.host, r.result.status.value) for r in rows if r.result
        ) == [
            ("box-a", "box-a", "ok"),
            ("box-b", "box-b", "ok"),
        ]
    finally:
        for host in ("box-a", "box-b"):
            _kill_leftovers(tmp_path / host / "agent.pid")
        broker.stop()
        local.stop()
        remote.stop()
