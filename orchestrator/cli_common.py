"""What every `orch` command module shares: the broker option's help, how a command finds
its broker (`--broker`, `$ORCH_BROKER_URL`, else the one-box service, said on stderr) and its
store.

Every `orch` command, `--help` included, imports the command modules, so they import the
core (redis-py, Celery, pydantic models, numpy, paramiko...) inside the commands that use it:
`tests/orchestrator/test_cli_startup.py` holds them to it, `benchmarks/startup.py` times it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from orchestrator.store import Store

BROKER_HELP = (
    "Broker URL (redis://[:password@]host:port/db); default $ORCH_BROKER_URL, else the "
    "one-box service's (`orch local start`)."
)


def _announce(message: str) -> None:
    click.echo(message, err=True)


def require_broker(explicit: str | None) -> str:
    """The broker a command cannot do without; OrchError saying how to get one otherwise."""
    from orchestrator.localservice import resolve_broker

    return resolve_broker(explicit, announce=_announce)


def optional_broker(explicit: str | None) -> str | None:
    """The broker a command reads when there is one (report, campaigns, status): the given
    one, or the one-box service's while it runs; None lets the command work from the store."""
    if explicit:
        return explicit
    from orchestrator.localservice import LocalService, resolve_broker

    service = LocalService()
    if service.exists() and service.running():
        return resolve_broker(None, announce=_announce)
    if service.exists():
        _announce(f"the one-box service in {service.dir} is stopped: showing the store only")
    return None


def resolve_store_path(ctx: click.Context) -> Path:
    """The store `orch --store` names, else the default one (`$ORCH_STORE`...)."""
    obj = ctx.ensure_object(dict)
    path: Path | None = obj.get("store_path")
    if path is None:
        from orchestrator.store import default_store_path

        path = obj["store_path"] = default_store_path()
    return path


def open_store(ctx: click.Context) -> Store:
    """The store this command reads or writes, opened once (the `orch` group may have)."""
    obj = ctx.ensure_object(dict)
    if "store" not in obj:
        from orchestrator.store import Store

        obj["store"] = Store.open(resolve_store_path(ctx))
    store: Store = obj["store"]
    return store
