"""The reading side of the `orch` command line: report, compare, campaigns, import.

Like `orchestrator.cli`, it only parses and prints; the work is in `orchestrator.report`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from orchestrator.cli_common import BROKER_HELP, open_store, optional_broker
from orchestrator.report import FORMATS

if TYPE_CHECKING:
    from orchestrator.report import PivotOptions
    from orchestrator.store import Store


def _axes_help() -> str:
    from orchestrator.report.pivot import AXES, METRIC

    return (
        f"Comma-separated axes: {', '.join((*AXES, METRIC))}, and any configuration part or "
        "setting the jobs have (configuration, ttm_pages_limit, platform_profile, power_limit_w)."
    )


def _metrics_help() -> str:
    from orchestrator.report.metrics import METRICS

    return f"Comma-separated: {', '.join(METRICS)}."


class _LateHelpOption(click.Option):
    """An option whose help names what only the report's modules know (axes, metrics), read
    when the help is shown: importing the commands must not import the report (numpy...)."""

    def __init__(self, *args: Any, late_help: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.late_help = late_help

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = self.late_help()
        return super().get_help_record(ctx)


def _store(ctx: click.Context) -> Store:
    """The store the `orch` group opened, or the one its --store option names."""
    return open_store(ctx)


def _axes(value: str | None) -> tuple[str, ...] | None:
    return tuple(a.strip() for a in value.split(",") if a.strip()) if value else None


def _baseline(value: str | None) -> tuple[tuple[str, str], ...]:
    """`host=laptop` or, naming one column fully, `host=laptop,vram_split=512M`."""
    from orchestrator.report import ReportError
    from orchestrator.report.matching import split_pairs

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
    from orchestrator.report import PivotOptions

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
            click.option(
                "--rows", cls=_LateHelpOption, late_help=lambda: f"Row axes. {_axes_help()}"
            ),  # fmt: skip
            click.option(
                "--columns",
                cls=_LateHelpOption,
                late_help=lambda: f"Column axes (default: host, dedicated VRAM). {_axes_help()}",
            ),
            click.option("--metrics", cls=_LateHelpOption, late_help=_metrics_help),
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
    from orchestrator.broker import connect
    from orchestrator.report import build_pivot, render

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
    from orchestrator.report import ReportError, render
    from orchestrator.report.compare import (
        RegressionError,
        compare_campaigns,
        compare_within,
        regressions,
    )

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
    from orchestrator.report.campaigns import blocked_by_campaign, render_campaigns

    store = _store(ctx)
    broker = optional_broker(broker)
    blocked = None
    if broker:
        from orchestrator.broker import broker_time, connect, read_fleet

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
    from orchestrator.report.importers.llama_bench import import_llama_bench

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


@click.command("export")
@click.argument("campaign")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl"]),
    default="jsonl",
    show_default=True,
    help="jsonl: every stored result of CAMPAIGN whole, one RunResult JSON a line.",
)
@click.option(
    "--out", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file."
)
@click.option("--broker", help=BROKER_HELP + " Collect new results from it first.")
@click.pass_context
def export_cmd(
    ctx: click.Context, campaign: str, fmt: str, out: Path | None, broker: str | None
) -> None:
    """Every stored result of CAMPAIGN, whole (job spec, every repetition, request timings,
    telemetry series, load records, host facts), one JSON object a line, for pandas
    (`read_json(lines=True)`), DuckDB (`read_json_auto`) or jq. Each line carries the
    `schema_version` it was written in. Results are read one at a time: memory stays flat."""
    from orchestrator.broker import connect
    from orchestrator.export import export_jsonl

    store = _store(ctx)
    broker = optional_broker(broker)
    if broker:
        store.collect(connect(broker))
    store.require_campaign(campaign)
    if out is None:
        count = export_jsonl(store, campaign, sys.stdout)
    else:
        partial = out.with_name(f".{out.name}.partial")
        with partial.open("w", encoding="utf-8") as file:
            count = export_jsonl(store, campaign, file)
        partial.replace(out)  # never a half-written export under the name asked for
    click.echo(f"{count} result(s) of {campaign}" + (f" in {out}" if out else ""), err=True)


COMMANDS = (report_cmd, compare_cmd, campaigns_cmd, import_group, export_cmd)
