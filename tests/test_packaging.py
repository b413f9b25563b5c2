"""Files around the code: the compose stack, the package boundaries, the llama.cpp cache."""

from __future__ import annotations

import ast
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml

from jobs.protocol import MAX_BULK_BYTES
from orchestrator.embedded import free_port
from worker.errors import ProvisionError
from worker.provision.llamacpp import (
    NO_AMX_FLAGS,
    TARGETS,
    configure_command,
    install_llamacpp,
)

ROOT = Path(__file__).resolve().parent.parent


def test_compose_redis_is_durable_and_password_protected() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    redis = compose["services"]["redis"]
    assert redis["entrypoint"] == ["sh", "-c"]
    (script,) = redis["command"]
    assert "exec redis-server /tmp/orch-redis.conf" in script
    assert redis["environment"]["REDISCLI_AUTH"].startswith("${ORCH_REDIS_PASSWORD:?")
    # The password never appears in an argv: not redis-server's, not the health check's.
    assert "PASSWORD" not in script and 'requirepass "%s"' in script
    assert f"proto-max-bulk-len {MAX_BULK_BYTES // 2**20}mb" in script  # jobs/protocol.py's cap
    assert "-a" not in redis["healthcheck"]["test"][1].split()
    assert redis["ports"] == ["${ORCH_REDIS_BIND:-127.0.0.1}:6379:6379"]
    for name in ("coordinator", "worker-example"):
        service = compose["services"][name]
        assert service["environment"]["ORCH_BROKER_URL"].startswith("redis://:${ORCH_REDIS")
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server here")
def test_compose_redis_script_writes_a_private_config_and_needs_the_password(
    tmp_path: Path,
) -> None:
    """The compose service's own script, run by sh with this machine's redis-server."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    (script,) = compose["services"]["redis"]["command"]
    conf = tmp_path / "redis.conf"
    port = free_port()
    script = script.replace("$$", "$").replace("/tmp/orch-redis.conf", str(conf))
    script = script.replace(
        f"exec redis-server {conf}", f"exec redis-server {conf} --port {port} --dir {tmp_path}"
    )
    password = 'pw with "quotes" and \\ $x'
    env = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": password}
    proc = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.DEVNULL)
    try:
        assert stat.S_IMODE(_wait_for(conf).stat().st_mode) == 0o600
        assert password not in " ".join(psutil.Process(proc.pid).cmdline())
        ping = ["redis-cli", "-p", str(port), "ping"]
        deadline = time.monotonic() + 10
        while (ok := subprocess.run(ping, env=env, capture_output=True, text=True)).stdout != (
            "PONG\n"
        ):
            assert time.monotonic() < deadline, ok.stdout + ok.stderr
            time.sleep(0.1)
        denied = subprocess.run(ping, env={"PATH": env["PATH"]}, capture_output=True, text=True)
        assert "NOAUTH" in denied.stdout + denied.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _wait_for(path: Path) -> Path:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.05)
    return path


def _compose_command() -> list[str]:
    """`docker compose` (the plugin) or a standalone `docker-compose` v2, else skip."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        version = subprocess.run([standalone, "version"], capture_output=True, text=True)
        if "v2." in version.stdout:
            return [standalone]
    pytest.skip("no docker compose v2 here (neither the docker plugin nor docker-compose)")


def test_compose_file_is_accepted_by_docker_compose() -> None:
    compose = _compose_command()
    done = subprocess.run(
        [*compose, "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={
            "ORCH_REDIS_PASSWORD": "test-only",
            "PATH": "/usr/bin:/bin:/usr/local/bin",
        },
    )
    assert done.returncode == 0, done.stderr


def test_compose_flower_needs_a_password_and_listens_on_loopback_only() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    flower = compose["services"]["flower"]
    assert flower["environment"]["CELERY_BROKER_URL"].startswith("redis://:${ORCH_REDIS")
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == (
        "orch:${ORCH_FLOWER_PASSWORD:-${ORCH_REDIS_PASSWORD:?set ORCH_REDIS_PASSWORD}}"
    )
    assert flower["ports"] == ["127.0.0.1:5555:5555"]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("orchestrator", {"worker"}),
        ("worker", {"orchestrator"}),
        ("jobs", {"worker", "orchestrator"}),
    ],
)
def test_packages_keep_one_direction_of_dependency(package: str, forbidden: set[str]) -> None:
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path}: imports {name}"


def test_llamacpp_install_returns_a_finished_build_from_cache(tmp_path: Path) -> None:
    prefix = tmp_path / "llama.cpp" / "9.9.9-cpu"
    (prefix / "bin").mkdir(parents=True)
    for name in TARGETS:
        (prefix / "bin" / name).write_text("#!/bin/sh\n")
    configure = configure_command(tmp_path / "llama.cpp", "9.9.9", "cpu", False, [])
    (prefix / "build.json").write_text(json.dumps({"version": "9.9.9", "configure": configure}))

    built = install_llamacpp("cpu", version="9.9.9", home=tmp_path)

    assert built.cached
    assert built.binaries == {name: prefix / "bin" / name for name in TARGETS}


@pytest.mark.parametrize(
    "stamp",
    [{"version": "9.9.9"}, {"configure": ["cmake", "-DOTHER=1"]}, "not json"],
    ids=["no flags recorded", "other flags", "damaged"],
)
def test_a_cached_build_with_other_flags_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stamp: object
) -> None:
    """A build made with other cmake flags (an orch that still built AMX, `--cmake-flag`s the
    owner changed since) is not reused: install goes on to fetch and build."""
    prefix = tmp_path / "llama.cpp" / "9.9.9-cpu"
    (prefix / "bin").mkdir(parents=True)
    for name in TARGETS:
        (prefix / "bin" / name).write_text("#!/bin/sh\n")
    (prefix / "build.json").write_text(stamp if isinstance(stamp, str) else json.dumps(stamp))

    def fetching(*_args: object) -> None:
        raise ProvisionError("would fetch the source and build")

    monkeypatch.setattr("worker.provision.llamacpp._fetch_source", fetching)
    with pytest.raises(ProvisionError, match="would fetch"):
        install_llamacpp("cpu", version="9.9.9", home=tmp_path)


def test_amx_is_left_out_of_x86_builds_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for machine, amx, flags in [
        ("x86_64", False, NO_AMX_FLAGS), ("x86_64", True, ""), ("aarch64", False, ""),
    ]:  # fmt: skip
        monkeypatch.setattr("platform.machine", lambda m=machine: m)
        command = configure_command(tmp_path, "9.9.9", "cpu", amx, ["-DX=1"])
        assert f"-DCMAKE_C_FLAGS={flags}" in command, machine
        assert f"-DCMAKE_CXX_FLAGS={flags}" in command, machine
        assert command[-1] == "-DX=1"  # the owner's flags last: they override orch's


def test_llamacpp_install_refuses_an_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="unknown backend 'metal2'.*cpu, cuda, rocm, vulkan"):
        install_llamacpp("metal2", home=tmp_path)
