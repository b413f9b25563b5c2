"""Fixtures of the fault-injection suite: a broker that can be killed and restarted on its
port, real agents (`orch worker`) whose llama-bench writes the run ledger, and a `Scenario`
(tests/faults/scenario.py) per test.

Figures go to `$ORCH_FAULT_FIGURES` (one JSON file per scenario) when it is set, else to a
folder under pytest's tmp; `scripts/fault-figures DIR` prints them as the README's table.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.embedded import EmbeddedBroker
from tests.faults.accounting import FIGURES_ENV
from tests.faults.scenario import Scenario
from tests.integration.conftest import start_worker  # noqa: F401  (fixture)

LEASE_TTL_S = 4  # short, so that scenarios that wait out a lease stay short


@pytest.fixture(scope="session")
def figures_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Read before the autouse clean_environ clears ORCH_* for the test.
    chosen = os.environ.get(FIGURES_ENV)
    return Path(chosen) if chosen else tmp_path_factory.mktemp("fault-figures")


@pytest.fixture
def broker_bind() -> tuple[str, ...]:
    """Addresses the broker listens on (the partition scenario adds its namespace's link)."""
    return ("127.0.0.1",)


@pytest.fixture
def broker_password() -> str | None:
    """None: loopback only (a broker on another address needs one: Valkey's protected mode)."""
    return None


@pytest.fixture
def fault_broker(
    tmp_path: Path, broker_bind: tuple[str, ...], broker_password: str | None
) -> Iterator[EmbeddedBroker]:
    """A Valkey (AOF on) that a scenario may kill -9 and start again on the same port."""
    server = EmbeddedBroker(tmp_path / "broker", bind=broker_bind, password=broker_password)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def broker(fault_broker: EmbeddedBroker) -> str:
    """The root conftest's `broker`, here the restartable one (start_worker uses it)."""
    return fault_broker.url


@pytest.fixture(autouse=True)
def agent_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What the agents inherit: a short lease, and an ORCH_HOME of the test's own, so that
    their outboxes (ORCH_HOME/spool/<host>) never carry results from one test into another."""
    monkeypatch.setenv("ORCH_LEASE_TTL_S", str(LEASE_TTL_S))
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "orch-home"))


@pytest.fixture
def scenario(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    broker: str,
    llama_bin: Path,
    tiny_models: dict[str, Path],
    figures_dir: Path,
) -> Iterator[Scenario]:
    """The test's Scenario, named after the test (without its `test_` prefix)."""
    name = request.node.name.removeprefix("test_")
    made = Scenario(name, tmp_path, broker, llama_bin, tiny_models, figures_dir)
    with made.watch:
        yield made
    made.client.close()
