"""`orch local start|stop|status|run|install|uninstall`: the one-box service (see localservice)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from jobs.brokerurl import redact_url
from jobs.process import pid_alive
from orchestrator import localinstall
from orchestrator.errors import BrokerError, OrchError
from orchestrator.localservice import LocalService, Supervisor, start, stop

DIR_HELP = "The service's folder; default $ORCH_LOCAL_DIR or ~/.local/share/orch/local."
NOT_RUNNING_EXIT = 1  # `orch local status` when the service is stopped


def _service(directory: Path | None) -> LocalService:
    return LocalService(directory)


@click.group("local")
def local_group() -> None:
    """One box: a persistent broker and this box's agent, surviving reboots."""


@local_group.command("start")
@click.option(
    "--worker-config",
    type=click.Path(path_type=Path),
    default=None,
    help="This box's worker.yaml (needed the first time; remembered after).",
)
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None, help=DIR_HELP)
def start_cmd(worker_config: Path | None, directory: Path | None) -> None:
    """Start the broker and the agent in the background (nothing happens if they run)."""
    service = _service(directory)
    started, state = start(service, worker_config)
    verb = "started" if started else "already running"
    click.echo(f"one-box service {verb}: broker {redact_url(service.url())}, agent pid "
               f"{state.agent_pid}, worker config {state.worker_config}")  # fmt: skip
    click.echo(f"logs: {service.log_path}, {service.agent_log}", err=True)


@local_group.command("stop")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None, help=DIR_HELP)
def stop_cmd(directory: Path | None) -> None:
    """Stop the agent (a running job gets a minute to finish, else it goes back to its
    queue), then the broker (its data is kept)."""
    stopped = stop(_service(directory))
    click.echo(
        "stopped " + ", ".join(stopped) if stopped else "the one-box service was not running"
    )


@local_group.command("status")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None, help=DIR_HELP)
def status_cmd(directory: Path | None) -> None:
    """Is the service running; its broker, agent and the configuration the box is in. Exits 1
    when it is stopped."""
    from orchestrator.broker import broker_time, connect, read_inventories

    service = _service(directory)
    if not service.exists():
        click.echo(f"no one-box service in {service.dir} (`orch local start --worker-config ...`)")
        sys.exit(NOT_RUNNING_EXIT)
    state = service.read_state()
    running = pid_alive(state.supervisor_pid)
    click.echo(f"folder:    {service.dir}")
    click.echo(f"service:   {f'running (pid {state.supervisor_pid})' if running else 'stopped'}")
    click.echo(f"worker:    {state.worker_config}")
    click.echo(f"broker:    {redact_url(service.url()) if state.port else '-'}")
    if running:
        try:
            client = connect(service.url(), outage_s=0)
            now = broker_time(client)
            for inv in read_inventories(client).values():
                if inv.pid == state.agent_pid:
                    online = "online" if inv.online(now) else "not answering"
                    click.echo(
                        f"agent:     {inv.host} pid {inv.pid}, {online}, consumes {inv.queue}"
                    )
                    break
            else:
                click.echo(f"agent:     pid {state.agent_pid}, not registered yet")
        except BrokerError as exc:
            click.echo(f"broker:    not answering: {exc}")
    if not running:
        sys.exit(NOT_RUNNING_EXIT)


@local_group.command("run", hidden=True)
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None, help=DIR_HELP)
@click.option("--worker-config", type=click.Path(path_type=Path), default=None)
def run_cmd(directory: Path | None, worker_config: Path | None) -> None:
    """The supervisor in the foreground (what `start`, systemd and launchd run)."""
    sys.exit(Supervisor(_service(directory), worker_config).run())


@local_group.command("install")
@click.option(
    "--worker-config",
    type=click.Path(path_type=Path),
    default=None,
    help="This box's worker.yaml (default: the one the service was started with).",
)
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None, help=DIR_HELP)
def install_cmd(worker_config: Path | None, directory: Path | None) -> None:
    """Start the service at every boot (systemd user unit on Linux), or login (launchd agent
    on macOS, Scheduled Task on Windows)."""
    service = _service(directory)
    state = service.read_state()
    if worker_config is not None:
        state.worker_config = str(worker_config.expanduser().absolute())
    if not state.worker_config:
        raise click.UsageError("give --worker-config worker.yaml (this box's config)")
    was_running = service.running()
    if was_running:
        stop(service)  # the service manager takes over from here
        state = service.read_state()
        if worker_config is not None:
            state.worker_config = str(worker_config.expanduser().absolute())
    service.password()
    service.write_state(state)
    try:
        outcome = localinstall.install(service.dir)
    except OrchError:
        if was_running:  # as it was before: running, by hand
            start(service, None)
        raise
    for line in outcome.lines:
        click.echo(line)


@local_group.command("uninstall")
def uninstall_cmd() -> None:
    """Stop the installed service and no longer start it at boot."""
    for line in localinstall.uninstall():
        click.echo(line)
