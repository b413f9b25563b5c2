"""The `orch` command line. It parses and prints; the work is in the core modules.

Box-side commands (`worker`, `engines`, `models`) come from the `orch.commands` entry-point
group, so this package never imports `worker`.

Each command imports the core it calls inside itself: `orch --help` and a command that has
nothing to do start without redis-py, Celery, pydantic models, numpy or paramiko (see
`orchestrator.cli_common`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from jobs.brokerurl import redact_text
from orchestrator.cli_common import (
    BROKER_HELP,
    open_store,
    optional_broker,
    require_broker,
    resolve_store_path,
)
from orchestrator.cli_dlq import dlq_group
from orchestrator.cli_local import local_group
from orchestrator.cli_report import COMMANDS as REPORT_COMMANDS
from orchestrator.errors import OrchError, WaitingForHumanError
from orchestrator.fleet.cli import fleet_group
from orchestrator.outagelimit import DEFAULT_OUTAGE_S, OUTAGE_ENV, set_outage_limit

if TYPE_CHECKING:
    from orchestrator.store import Store
    from orchestrator.submit import Progress, SubmitOutcome


class OrchGroup(click.Group):
    """A click group that also offers the commands other orch packages register."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *(ep.name for ep in _plugins())})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        for ep in _plugins():
            if ep.name == cmd_name:
                loaded: click.Command = ep.load()
                return loaded
        return None


def _plugins() -> list[Any]:
    from importlib.metadata import entry_points  # only to list or find a box-side command

    return list(entry_points(group="orch.commands"))


def _store(ctx: click.Context) -> Store:
    return open_store(ctx)


@click.group(cls=OrchGroup)
@click.option(
    "--store",
    "store_path",
    type=click.Path(path_type=Path),
    envvar="ORCH_STORE",
    default=None,
    help="Result store (SQLite). Default $ORCH_STORE or ~/.local/share/orch/orch.db.",
)
@click.option(
    "--broker-outage",
    "broker_outage_s",
    type=click.FloatRange(min=0),
    envvar=OUTAGE_ENV,
    default=None,
    help="Seconds a command waits for a broker that stopped answering (a restart) before it "
    f"gives up. Default ${OUTAGE_ENV} or {DEFAULT_OUTAGE_S:g}.",
)
@click.pass_context
def cli(ctx: click.Context, store_path: Path | None, broker_outage_s: float | None) -> None:
    """orch: benchmark local LLM inference across your boxes."""
    ctx.ensure_object(dict)
    set_outage_limit(broker_outage_s)
    ctx.obj["store_path"] = store_path  # None: the default, found when a command needs it
    if ctx.invoked_subcommand in ("submit", "status", "report", "demo", "retry", "cancel"):
        open_store(ctx)


_WAIT_OPTIONS = [
    click.option(
        "--timeout", type=float, default=None, help="With --wait: give up after N seconds."
    ),
    click.option(
        "--wait-for-reconfiguration",
        is_flag=True,
        help="With --wait: keep waiting when every job left needs a reboot or a worker "
        "(default: print what to do and exit with code 4).",
    ),
]


def _wait_options(command: Any) -> Any:
    for option in reversed(_WAIT_OPTIONS):
        command = option(command)
    return command


@cli.command("submit")
@click.argument("matrix", type=click.Path(path_type=Path))
@click.option("--broker", envvar="ORCH_BROKER_URL", default=None, help=BROKER_HELP)
@click.option("--wait", is_flag=True, help="Show progress until every job is done, then report.")
@click.option("--json", "as_json", is_flag=True, help="Print the submission as JSON.")
@click.option(
    "--local",
    is_flag=True,
    help="One box: start the one-box service if it is not running (`orch local start`), "
    "queue there and wait.",
)
@click.option(
    "--worker-config",
    type=click.Path(path_type=Path),
    help="With --local: this box's worker.yaml (needed the first time).",
)
@_wait_options
@click.option(
    "--skip-predicted-failures",
    is_flag=True,
    help="Do not queue jobs the planner predicts will not load; report them as skipped.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    help="NAME=PATH of a GGUF file here, for the planner (default: the shape the host reports).",
)
@click.pass_context
def submit_cmd(
    ctx: click.Context,
    matrix: Path,
    broker: str | None,
    wait: bool,
    as_json: bool,
    local: bool,
    worker_config: Path | None,
    timeout: float | None,
    wait_for_reconfiguration: bool,
    skip_predicted_failures: bool,
    models: tuple[str, ...],
) -> None:
    """Expand MATRIX, check it against the fleet, and queue its jobs."""
    from orchestrator.localservice import LocalService
    from orchestrator.localservice import start as start_local_service
    from orchestrator.plan import parse_model_options
    from orchestrator.submit import submit

    store = _store(ctx)
    files = parse_model_options(models)
    if local:
        if broker:
            raise OrchError("--local queues on the one-box service: leave out --broker")
        service = LocalService()
        started, _state = start_local_service(service, worker_config)
        if started:
            click.echo(f"started the one-box service in {service.dir}", err=True)
        wait = True
    url = require_broker(broker)
    outcome = submit(
        matrix, url, store, skip_predicted_failures=skip_predicted_failures, model_files=files
    )
    _print_submission(outcome, as_json)
    if wait:
        _wait_and_report(store, url, outcome.campaign, timeout, wait_for_reconfiguration)


def _print_submission(outcome: SubmitOutcome, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(outcome.as_dict()))
        return
    click.echo(outcome.campaign)
    requeued = f" ({len(outcome.requeued)} re-queued: the broker had lost them)"
    click.echo(
        f"{len(outcome.published)} job(s) queued{requeued if outcome.requeued else ''}, "
        f"{len(outcome.waiting)} already waiting, {len(outcome.done)} already done"
        + (f", {len(outcome.skipped)} skipped (predicted not to load)" if outcome.skipped else ""),
        err=True,
    )
    for note in outcome.notes:
        click.echo(f"note: {note}", err=True)
    for warning in outcome.warnings:
        click.echo(f"warning: {warning}", err=True)


def _wait_and_report(
    store: Store,
    broker: str,
    campaign: str,
    timeout: float | None,
    wait_for_reconfiguration: bool = False,
) -> None:
    from orchestrator.report import build_pivot, render

    final = _wait(store, broker, campaign, timeout, wait_for_reconfiguration)
    click.echo(render(build_pivot(campaign, store.campaign_jobs(campaign)), "table"))
    _end_of_wait(final, campaign)


def _wait(
    store: Store, broker: str, campaign: str, timeout: float | None, keep_waiting: bool
) -> Progress:
    from orchestrator.broker import connect
    from orchestrator.submit import wait_for

    client = connect(broker)
    with click.progressbar(length=1, label=f"{campaign}", file=sys.stderr) as bar:
        seen = 0

        def on_progress(state: Progress) -> None:
            nonlocal seen
            bar.length = max(state.total, 1)
            bar.update(state.finished - seen)
            seen = state.finished

        def on_outage(message: str) -> None:
            click.echo(f"\n{message}", err=True)

        return wait_for(
            store, client, campaign, timeout_s=timeout, wait_for_reconfiguration=keep_waiting,
            on_progress=on_progress, on_outage=on_outage,
        )  # fmt: skip


def _end_of_wait(final: Progress, campaign: str) -> None:
    if final.done:
        return
    if final.blocked:
        raise WaitingForHumanError(
            f"{final.finished}/{final.total} jobs finished; the rest cannot run until "
            "someone acts:\n"
            + "\n".join(f"  {line}" for line in final.blocked)
            + f"\nthen `orch status {campaign} --wait` (or --wait-for-reconfiguration to keep "
            "waiting)"
        )
    raise OrchError(f"timed out: {final.finished}/{final.total} jobs finished")


@cli.command("status")
@click.argument("campaign", required=False)
@click.option("--broker", envvar="ORCH_BROKER_URL", default=None, help=BROKER_HELP)
@click.option("--wait", is_flag=True, help="With CAMPAIGN: wait until it is done, then report.")
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2, max=3600),
    default=2.0,
    show_default=True,
    help="Seconds between redraws with --watch.",
)
@_wait_options
@click.pass_context
def status_cmd(
    ctx: click.Context,
    campaign: str | None,
    broker: str | None,
    wait: bool,
    watch: bool,
    interval: float,
    timeout: float | None,
    wait_for_reconfiguration: bool,
) -> None:
    """Hosts (online, queue, waiting jobs, the job under way), campaign progress and ETA."""
    from orchestrator import status as status_mod

    store = _store(ctx)
    if watch:
        if wait:
            raise click.UsageError("--watch and --wait do not go together")
        from orchestrator.status_watch import watch_status

        if campaign:
            store.require_campaign(campaign)
        found = optional_broker(broker)
        watch_status(store, _connect(found) if found else None, campaign, interval, sys.stdout)
        return
    if wait:
        if not campaign:
            raise click.UsageError("--wait needs a CAMPAIGN")
        store.require_campaign(campaign)
        url = require_broker(broker)
        final = _wait(store, url, campaign, timeout, wait_for_reconfiguration)
        click.echo(status_mod.render_status(store, _connect(url), campaign))
        _end_of_wait(final, campaign)
        return
    found = optional_broker(broker)
    client = _connect(found) if found else None
    if client is not None and store.read_only:
        click.echo(f"{store.path} is read-only: showing what it holds, without new results",
                   err=True)  # fmt: skip
    elif client is not None:
        store.collect(client)
    click.echo(status_mod.render_status(store, client, campaign))


def _connect(url: str) -> Any:
    from orchestrator.broker import connect  # only with a broker: redis-py, Celery, kombu

    return connect(url)


@cli.command("plan")
@click.argument("matrix", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "models",
    multiple=True,
    help="NAME=PATH of a GGUF file on this machine, for the estimate (repeatable).",
)
@click.option("--broker", envvar="ORCH_BROKER_URL", default=None, help=BROKER_HELP)
@click.pass_context
def plan_cmd(ctx: click.Context, matrix: Path, models: tuple[str, ...], broker: str | None) -> None:
    """Estimate each job's memory (weights, KV, compute), whether it fits its host's
    configuration, and its duration from earlier runs."""
    from orchestrator.broker import connect, read_fleet
    from orchestrator.matrixfile import load_matrix_file
    from orchestrator.plan import context_warnings, parse_model_options, plan, render_plan
    from orchestrator.store import Store
    from orchestrator.submit import resolve_configurations

    mf = load_matrix_file(matrix)
    url = optional_broker(broker)
    fleet = read_fleet(connect(url)) if url else None
    jobs = resolve_configurations(mf.jobs, fleet.inventories) if fleet else mf.jobs
    path = resolve_store_path(ctx)
    store = Store.open(path) if path.exists() else None  # durations of earlier runs, if any
    rows = plan(jobs, parse_model_options(models), fleet, store)
    click.echo(render_plan(rows, fleet))
    for warning in context_warnings(mf, rows):
        click.echo(f"warning: {warning}", err=True)


@cli.command("retry")
@click.argument("campaign")
@click.option("--failed", is_flag=True, required=True, help="Re-run jobs whose result failed.")
@click.option("--broker", envvar="ORCH_BROKER_URL", default=None, help=BROKER_HELP)
@click.pass_context
def retry_cmd(ctx: click.Context, campaign: str, failed: bool, broker: str | None) -> None:
    """Queue the failed jobs of CAMPAIGN again (load failed, timeout, error)."""
    from orchestrator.control import retry_failed

    jobs = retry_failed(campaign, require_broker(broker), _store(ctx))
    click.echo(f"{len(jobs)} failed job(s) of {campaign} queued again")


@cli.command("cancel")
@click.argument("campaign")
@click.option("--broker", envvar="ORCH_BROKER_URL", default=None, help=BROKER_HELP)
@click.pass_context
def cancel_cmd(ctx: click.Context, campaign: str, broker: str | None) -> None:
    """Take CAMPAIGN's waiting jobs out of their queues (running ones finish)."""
    from orchestrator.control import cancel

    done = cancel(campaign, require_broker(broker), _store(ctx))
    click.echo(
        f"{campaign}: {done.removed} job(s) taken out of their queues, {done.running} running "
        "(they will finish); submit the matrix again to resume"
    )


@cli.command("hosts")
@click.option("--broker", envvar="ORCH_BROKER_URL", default=None, help=BROKER_HELP)
def hosts_cmd(broker: str | None) -> None:
    """Every registered box: state, queue, declared and detected facts (fingerprint)."""
    from orchestrator.broker import connect
    from orchestrator.hosts import render_hosts

    click.echo(render_hosts(connect(require_broker(broker))))


@cli.command("demo")
@click.option("--timeout", type=float, default=1800, show_default=True)
@click.pass_context
def demo_cmd(ctx: click.Context, timeout: float) -> None:
    """Build llama.cpp and a tiny model, run a small matrix on this box, print the report."""
    import tempfile

    from jobs.brokerurl import redact_url
    from jobs.paths import orch_home
    from orchestrator.local import local_fleet, prepare_demo
    from orchestrator.submit import submit

    store = _store(ctx)
    data_dir = orch_home() / "demo"
    click.echo("preparing llama.cpp and the tiny models (first run builds, ~5 min)...", err=True)
    worker_yaml, matrix_yaml = prepare_demo(data_dir)
    with tempfile.TemporaryDirectory(prefix="orch-demo-") as tmp:
        with local_fleet(worker_yaml, Path(tmp)) as fleet:
            click.echo(
                f"embedded broker {redact_url(fleet.broker_url)}, worker {fleet.host}", err=True
            )
            outcome = submit(matrix_yaml, fleet.broker_url, store)
            click.echo(f"campaign {outcome.campaign}: {len(outcome.published)} jobs", err=True)
            _wait_and_report(store, fleet.broker_url, outcome.campaign, timeout)
    click.echo(f"\nstore: {store.path}  (orch report {outcome.campaign} --format md)", err=True)


for _command in REPORT_COMMANDS:  # report, compare, campaigns, import
    cli.add_command(_command)
cli.add_command(fleet_group)
cli.add_command(local_group)
cli.add_command(dlq_group)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OrchError as exc:
        click.echo(f"error: {redact_text(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if not isinstance(exc, _broker_failures()):
            raise
        # The broker stayed away longer than --broker-outage in the middle of a command.
        click.echo(f"error: broker or network failure: {redact_text(str(exc))}", err=True)
        sys.exit(3)


def _broker_failures() -> tuple[type[BaseException], ...]:
    """OSError, and redis-py's and kombu's errors when the command imported them: a module
    that was never imported raised nothing, so catching them costs no import."""
    failures: list[type[BaseException]] = [OSError]
    redis = sys.modules.get("redis")
    if redis is not None:
        failures.append(redis.RedisError)
    kombu_exceptions = sys.modules.get("kombu.exceptions")
    if kombu_exceptions is not None:
        failures.append(kombu_exceptions.KombuError)
    return tuple(failures)
