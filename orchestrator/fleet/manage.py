"""`orch fleet status | restart | stop | logs | facts`: the deployed agents, box by box.

Each command works on the boxes in parallel and returns one row per box; a box that cannot be
reached is a row that says why. Nothing here prints the broker URL unredacted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator.errors import HostError
from orchestrator.fleet import service
from orchestrator.fleet.boxfacts import BoxFacts, read_facts
from orchestrator.fleet.deploy import HostOutcome, failed_outcome
from orchestrator.fleet.inventory import FleetFile, Target
from orchestrator.fleet.registry import broker_states
from orchestrator.fleet.remote import Box, for_each_host
from orchestrator.fleet.state import DeployState, read_state
from orchestrator.fleet.units import Layout, Mode, expand_home


@dataclass
class AgentStatus:
    host: str
    state: str  # running / stopped / not deployed / FAILED: reason
    mode: str = "-"
    orch: str = "-"  # version (fingerprint prefix)
    deployed: str = "-"
    broker: str = "-"  # what the broker says: online, offline, never registered, not checked
    detail: str = ""


def _open(fleet: FleetFile, target: Target) -> tuple[Box, Layout, DeployState | None]:
    box = Box.open(target, fleet.local_path(fleet.inventory.known_hosts))
    try:
        layout = Layout(expand_home(target.deploy_dir, box.run('printf %s "$HOME"').stdout))
        return box, layout, read_state(box, layout)
    except BaseException:
        box.close()
        raise


def status(fleet: FleetFile, targets: list[Target], client: Any | None) -> list[AgentStatus]:
    def one(target: Target) -> AgentStatus:
        box, layout, state = _open(fleet, target)
        with box:
            if state is None:
                return AgentStatus(target.name, "not deployed")
            running = service.is_running(box, layout, Mode(state.mode))
        when = datetime.fromtimestamp(state.deployed_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        return AgentStatus(
            target.name,
            "running" if running else "stopped",
            mode=state.mode,
            orch=f"{state.orch_version} ({state.orch_fingerprint[:12]})",
            deployed=when,
        )

    def failed(error: HostError) -> AgentStatus:
        return AgentStatus(error.host, f"FAILED: {error.reason}", detail=error.detail)

    rows = for_each_host(targets, one, failed)
    states = broker_states(client, [row.host for row in rows])  # one read of the broker
    for row in rows:
        row.broker = states[row.host]
    return rows


def restart(fleet: FleetFile, targets: list[Target]) -> list[HostOutcome]:
    def restart_one(box: Box, layout: Layout, mode: Mode) -> None:
        service.restart(box, layout, mode)
        service.wait_running(box, layout, mode)

    return _each_deployed(fleet, targets, "restarted", restart_one)


def stop(fleet: FleetFile, targets: list[Target]) -> list[HostOutcome]:
    def stop_one(box: Box, layout: Layout, mode: Mode) -> None:
        if not service.stop(box, layout, mode):
            raise _NothingToDo
        if service.is_running(box, layout, mode):
            raise HostError(box.target.name, "still running", "the agent did not stop")

    return _each_deployed(fleet, targets, "stopped", stop_one)


class _NothingToDo(Exception):
    pass


def _each_deployed(
    fleet: FleetFile, targets: list[Target], done: str, action: Any
) -> list[HostOutcome]:
    def one(target: Target) -> HostOutcome:
        box, layout, state = _open(fleet, target)
        with box:
            if state is None:
                raise HostError(target.name, "not deployed", "run `orch fleet deploy` first")
            mode = Mode(state.mode)
            try:
                action(box, layout, mode)
            except _NothingToDo:
                return HostOutcome(target.name, ok=True, mode=mode.value)
            return HostOutcome(target.name, ok=True, mode=mode.value, changes=[done])

    return for_each_host(targets, one, failed_outcome)


def logs(fleet: FleetFile, target: Target, lines: int) -> str:
    box, layout, state = _open(fleet, target)
    with box:
        if state is None:
            raise HostError(target.name, "not deployed", "run `orch fleet deploy` first")
        return service.logs(box, layout, Mode(state.mode), lines)


def facts(fleet: FleetFile, targets: list[Target]) -> list[tuple[str, BoxFacts | HostError]]:
    def one(target: Target) -> tuple[str, BoxFacts | HostError]:
        with Box.open(target, fleet.local_path(fleet.inventory.known_hosts)) as box:
            return target.name, read_facts(box)

    return for_each_host(targets, one, lambda error: (error.host, error))
