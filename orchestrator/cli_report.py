"""The reading side of the `orch` command line: report, compare, campaigns, import.

Like `orchestrator.cli`, it only parses and prints; the work is in `orchestrator.report`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from orchestrator.broker import broker_time, connect, read_fleet
from orchestrator.cli_common import BROKER_HELP, optional_broker
from orchestrator.report import FORMATS, PivotOptions, ReportError, build_pivot, render
from orchestrator.report.campaigns import blocked_by_campaign, render_campaigns
from orchestrator.report.compare import (
    RegressionError,
    compare_campaigns,
    compare_within,
    regressions,
)
from orchestrator.report.importers.llama_bench import import_llama_bench
from orchestrator.report.matching import split_pairs
from orchestrator.report.metrics import METRICS
from orchestrator.report.pivot import AXES, METRIC
from orchestrator.store import Store

_AXES_HELP = (
    f"Comma-separated axes: {', '.join((*AXES, METRIC))}, and any configuration part or "
    "setting the jobs have (configuration, ttm_pages_limit, platform_profile, power_limit_w)."
)


def _store(ctx: click.Context) -> Store:
    """The store the `orch` group opened, or the one its --store option names."""
    obj = ctx.ensure_object(dict)
    if "store" not in obj:
        obj["store"] = Store.open(obj["store_path"])
    store: Store = obj["store"]
    return store


def _axes(value: str | None) -> tuple[str, ...] | None:
    return tuple(a.strip() for a in value.split(",") if a.strip()) if value else None


def _baseline(value: str | None) -> tuple[tuple[str, str], ...]:
    """`host=laptop` or, naming one column fully, `host=laptop,vram_split=512M`."""
    pairs = []
    for part in split_pairs(value) if value else []:
        axis, sep, wanted = part.partition("=")
        if not sep or not axis.strip() or not wanted.strip():
            raise ReportError(
                f"--baseline {value!r}: expected AXIS=VALUE[,AXIS=VALUE...], e.g. "
                "host=laptop-80w or host=laptop-80w,vram_split=512M"
            )
        pairs.append((axis.strip(), wanted.strip()))
    return tuple(pairs)


def _options(
    rows: str | None, columns: str | None, metrics: str | None, baseline: str | None = None
) -> PivotOptions:
    pairs = _baseline(baseline)
    first = pairs[0] if pairs else None
    return PivotOptions(_axes(rows), _axes(columns), _axes(metrics), first, pairs[1:])


def _emit(text: str, out: Path | None) -> None:
    if out:
        out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text)


_F = TypeVar("_F", bound=Callable[..., Any])


def _layout_options(command: _F) -> _F:
    for option in reversed(
        [
            click.option("--rows", help=f"Row axes. {_AXES_HELP}"),
            click.option(
                "--columns", help=f"Column axes (default: host, dedicated VRAM). {_AXES_HELP}"
            ),  # fmt: skip
            click.option("--metrics", help=f"Comma-separated: {', '.join(METRICS)}."),
            click.option(
                "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True
            ),  # fmt: skip
            click.option("--out", type=click.Path(path_type=Path), help="Write to FILE."),
        ]
    ):
        command = option(command)
    return command


@click.command("report")
@click.argument("campaign")
@_layout_options
@click.option(
    "--baseline",
    help="AXIS=VALUE the other cells are compared with (host=laptop); where it matches several "
    "columns, name one fully: host=laptop,vram_split=512M.",
)
@click.option("--broker", envvar="ORCH_BROKER_URL", default=None, help=BROKER_HELP)
@click.pass_context
def report_cmd(
    ctx: click.Context,
    campaign: str,
    rows: str | None,
    columns: str | None,
    metrics: str | None,
    fmt: str,
    out: Path | None,
    baseline: str | None,
    broker: str | None,
) -> None:
    """The comparison table of CAMPAIGN: configurations as columns, metrics as rows."""
    store = _store(ctx)
    broker = optional_broker(broker)
    if broker:
        store.collect(connect(broker))
    store.require_campaign(campaign)
    jobs = store.campaign_jobs(campaign)
    options = _options(rows, columns, metrics, baseline)
    _emit(render(build_pivot(campaign, jobs, options), fmt), out)


@click.command("compare")
@click.argument("a")
@click.argument("b")
@click.option(
    "--campaign",
    help="Compare A and B (AXIS=VALUE[,AXIS=VALUE...], e.g. backend=vulkan) within it.",
)
@click.option(
    "--ignore",
    "ignore",
    multiple=True,
    metavar="AXIS",
    help="Match A's and B's jobs across AXIS (repeatable), e.g. --ignore vram_split for two "
    "boxes each in its own carve-out; refused where it would pool two jobs of one side.",
)
@_layout_options
@click.option(
    "--fail-on-regression",
    "fail_pct",
    type=float,
    default=None,
    help="Exit 1 when B is worse than A by more than PCT percent (a real difference at 5%), "
    "or failed, is missing or has no result where A has figures.",
)
@click.pass_context
def compare_cmd(
    ctx: click.Context,
    a: str,
    b: str,
    campaign: str | None,
    ignore: tuple[str, ...],
    rows: str | None,
    columns: str | None,
    metrics: str | None,
    fmt: str,
    out: Path | None,
    fail_pct: float | None,
) -> None:
    """B against A: two campaigns, or two values of some axes with --campaign, matched on
    every other axis but those named with --ignore."""
    if columns:
        raise ReportError("orch compare puts A and B in the columns: use --rows, not --columns")
    store = _store(ctx)
    options = _options(rows, None, metrics)
    if campaign:
        pivot = compare_within(store, campaign, a, b, options, ignore)
    else:
        pivot = compare_campaigns(store, a, b, options, ignore)
    _emit(render(pivot, fmt), out)
    if fail_pct is not None:
        found = regressions(pivot, fail_pct)
        if found:
            lines = "\n".join(f"  {r}" for r in found)
            raise RegressionError(
                f"{len(found)} regression(s) of {b} against {a} beyond {fail_pct:g}%:\n{lines}"
            )
        click.echo(f"no regression of {b} against {a} beyond {fail_pct:g}%", err=True)


@click.command("campaigns")
@click.option("--broker", envvar="ORCH_BROKER_URL", default=None, help=BROKER_HELP)
@click.pass_context
def campaigns_cmd(ctx: click.Context, broker: str | None) -> None:
    """Every campaign in the store: dates, hosts, job counts, status."""
    store = _store(ctx)
    broker = optional_broker(broker)
    blocked = None
    if broker:
        client = connect(broker)
        store.collect(client)
        blocked = blocked_by_campaign(store, read_fleet(client), broker_time(client))
    click.echo(render_campaigns(store, blocked))


@click.group("import")
def import_group() -> None:
    """Bring results made outside orch into the store."""


@import_group.command("llama-bench")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--host", help="The box the tests ran on (default: orch_host in orch's exports).")
@click.option("--campaign", help="Campaign to record them in (default: import-FILESTEM).")
@click.option("--backend", help="Backend name (default: from the file's `backends` field).")
@click.option("--model", help="Model name (default: the model file's name).")
@click.pass_context
def import_llama_bench_cmd(
    ctx: click.Context,
    file: Path,
    host: str | None,
    campaign: str | None,
    backend: str | None,
    model: str | None,
) -> None:
    """Import `llama-bench -o json` or `-o jsonl` output FILE as a campaign."""
    store = _store(ctx)
    done = import_llama_bench(store, file, host, campaign=campaign, backend=backend, model=model)
    click.echo(done.campaign)
    if done.skipped_pg:
        click.echo(
            f"skipped {done.skipped_pg} -pg test(s): prompt and generation timed together give "
            "a rate that is neither pp nor tg",
            err=True,
        )
    click.echo(
        f"{done.tests} test(s) as {done.jobs} job(s), {done.new_results} new; "
        f"`orch report {done.campaign}` shows them",
        err=True,
    )


COMMANDS = (report_cmd, compare_cmd, campaigns_cmd, import_group)
