"""What every `orch` command module shares: the broker option's help and how a command finds
its broker (`--broker`, `$ORCH_BROKER_URL`, else the one-box service, said on stderr)."""

from __future__ import annotations

import click

from orchestrator.localservice import LocalService, resolve_broker

BROKER_HELP = (
    "Broker URL (redis://[:password@]host:port/db); default $ORCH_BROKER_URL, else the "
    "one-box service's (`orch local start`)."
)


def _announce(message: str) -> None:
    click.echo(message, err=True)


def require_broker(explicit: str | None) -> str:
    """The broker a command cannot do without; OrchError saying how to get one otherwise."""
    return resolve_broker(explicit, announce=_announce)


def optional_broker(explicit: str | None) -> str | None:
    """The broker a command reads when there is one (report, campaigns, status): the given
    one, or the one-box service's while it runs; None lets the command work from the store."""
    if explicit:
        return explicit
    service = LocalService()
    if service.exists() and service.running():
        return resolve_broker(None, announce=_announce)
    if service.exists():
        _announce(f"the one-box service in {service.dir} is stopped: showing the store only")
    return None
