"""`orch fleet ...`: deploy and run the agents over SSH. Parses and prints; the work is in
`deploy` and `manage`.

The inventory is the last argument of every command, `fleet.yaml` (or $ORCH_FLEET) when left
out: `orch fleet deploy fleet.yaml --hosts laptop`, `orch fleet logs laptop fleet.yaml`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from jobs.brokerurl import redact_url
from orchestrator.errors import FleetError

# The work (pydantic inventories, paramiko and fabric for SSH, the broker) is imported by the
# commands that do it: every `orch` command, `--help` included, imports this module.
if TYPE_CHECKING:
    from orchestrator.fleet.deploy import HostOutcome
    from orchestrator.fleet.inventory import FleetFile


def _load(inventory: Path | None) -> FleetFile:
    from orchestrator.fleet.inventory import load_inventory

    path = inventory or Path(os.environ.get("ORCH_FLEET") or "fleet.yaml")
    if inventory is None and not path.exists():
        raise FleetError(
            f"no inventory: {path} does not exist; name one (orch fleet status FLEET.yaml) "
            "or set ORCH_FLEET (examples/fleet.yaml shows the format)"
        )
    return load_inventory(path)


def _hosts(option: str | None) -> list[str] | None:
    return [h.strip() for h in option.split(",") if h.strip()] if option else None


inventory_arg = click.argument(
    "inventory", required=False, type=click.Path(path_type=Path), metavar="[FLEET.yaml]"
)
hosts_opt = click.option("--hosts", help="Only these hosts (comma-separated names).")


@click.group("fleet")
def fleet_group() -> None:
    """Deploy and run orch agents on your boxes over SSH.

    FLEET.yaml, the inventory, defaults to $ORCH_FLEET, else ./fleet.yaml.
    """


@fleet_group.command("deploy")
@inventory_arg
@hosts_opt
@click.option(
    "--wheelhouse",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Install offline from this folder of wheels (overrides the inventory's).",
)
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=60,
    show_default=True,
    help="Seconds to wait for each agent to register on the broker.",
)
def deploy_cmd(
    inventory: Path | None, hosts: str | None, wheelhouse: Path | None, wait_s: float
) -> None:
    """Install (or update) the agent on each box and start it; unchanged boxes stay as they are."""
    import tempfile

    from orchestrator.fleet.deploy import deploy_fleet

    fleet = _load(inventory)
    targets = fleet.targets(_hosts(hosts))
    house = wheelhouse or fleet.local_path(fleet.inventory.wheelhouse)
    click.echo(
        f"deploying to {len(targets)} host(s), broker {redact_url(fleet.inventory.broker.url)}",
        err=True,
    )
    with tempfile.TemporaryDirectory(prefix="orch-fleet-") as tmp:
        outcomes = deploy_fleet(fleet, targets, Path(tmp), house, wait_s)
    _print_outcomes(outcomes, with_broker=True)


@fleet_group.command("status")
@inventory_arg
@hosts_opt
def status_cmd(inventory: Path | None, hosts: str | None) -> None:
    """Each box's agent: running or not, service mode, orch version, and what the broker says."""
    from tabulate import tabulate

    from orchestrator.fleet import manage
    from orchestrator.fleet.registry import try_connect

    fleet = _load(inventory)
    client, why = try_connect(fleet.broker_url(fleet.local_ca()))
    rows = manage.status(fleet, fleet.targets(_hosts(hosts)), client)
    click.echo(f"broker {redact_url(fleet.inventory.broker.url)}" + (f": {why}" if why else ""))
    table = [[r.host, r.state, r.mode, r.orch, r.deployed, r.broker] for r in rows]
    click.echo(tabulate(table, ["host", "agent", "mode", "orch", "deployed", "broker"]))
    for r in rows:
        if r.detail:
            click.echo(f"{r.host}: {r.detail}", err=True)
    if any(r.state.startswith("FAILED") for r in rows):
        sys.exit(1)


@fleet_group.command("restart")
@inventory_arg
@hosts_opt
def restart_cmd(inventory: Path | None, hosts: str | None) -> None:
    """Restart the agent on each box."""
    from orchestrator.fleet import manage

    fleet = _load(inventory)
    _print_outcomes(manage.restart(fleet, fleet.targets(_hosts(hosts))))


@fleet_group.command("stop")
@inventory_arg
@hosts_opt
def stop_cmd(inventory: Path | None, hosts: str | None) -> None:
    """Stop the agent on each box (a job it was running is queued again when it restarts)."""
    from orchestrator.fleet import manage

    fleet = _load(inventory)
    _print_outcomes(manage.stop(fleet, fleet.targets(_hosts(hosts))))


@fleet_group.command("logs")
@click.argument("host")
@inventory_arg
@click.option("-n", "lines", type=int, default=100, show_default=True, help="Last N lines.")
def logs_cmd(host: str, inventory: Path | None, lines: int) -> None:
    """The agent's log on HOST (journalctl, or agent.log without systemd)."""
    from orchestrator.fleet import manage

    fleet = _load(inventory)
    click.echo(manage.logs(fleet, fleet.targets([host])[0], lines), nl=False)


@fleet_group.command("facts")
@inventory_arg
@hosts_opt
def facts_cmd(inventory: Path | None, hosts: str | None) -> None:
    """What each box offers the agent: OS, CPUs, memory, Python, systemd, sudo, free disk."""
    from tabulate import tabulate

    from orchestrator.fleet import manage

    fleet = _load(inventory)
    rows, failed = [], False
    for host, facts in manage.facts(fleet, fleet.targets(_hosts(hosts))):
        if isinstance(facts, Exception):
            rows.append([host, f"FAILED: {facts.reason}"] + [""] * 6)
            click.echo(f"{host}: {facts.detail}", err=True)
            failed = True
            continue
        rows.append(
            [
                host,
                f"{facts.os} ({facts.kernel}, {facts.arch})",
                facts.cpus,
                f"{facts.mem_gib} GiB" if facts.mem_gib is not None else "?",
                facts.python or "none",
                "yes" if facts.systemd else "no",
                "yes" if facts.privileged else "no",
                f"{facts.disk_free_mb} MB" if facts.disk_free_mb is not None else "?",
            ]
        )
    headers = ["host", "os", "cpus", "memory", "python", "systemd", "root/sudo", "disk free"]
    click.echo(tabulate(rows, headers))
    if failed:
        sys.exit(1)


def _print_outcomes(outcomes: list[HostOutcome], with_broker: bool = False) -> None:
    from tabulate import tabulate

    headers = ["host", "mode", "result", *(["broker"] if with_broker else []), "detail"]
    rows = [
        [o.host, o.mode, o.result, *([o.broker] if with_broker else []), o.detail] for o in outcomes
    ]
    click.echo(tabulate(rows, headers))
    if not all(o.ok for o in outcomes):
        sys.exit(1)
