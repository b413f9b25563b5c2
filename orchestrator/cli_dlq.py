"""`orch dlq list|purge`: messages the queues refused (malformed, unknown, oversized,
misrouted). It parses and prints; the work is in `orchestrator.dlq`."""

from __future__ import annotations

import click

from orchestrator.cli_common import BROKER_HELP, require_broker


@click.group("dlq")
def dlq_group() -> None:
    """The dead-letter list: queued messages that were refused, with the reason."""


@dlq_group.command("list")
@click.option("--broker", envvar="ORCH_BROKER_URL", default=None, help=BROKER_HELP)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def dlq_list(broker: str | None, limit: int, as_json: bool) -> None:
    """The newest refused messages: when, queue, who moved them, why, how they start."""
    from orchestrator.broker import connect
    from orchestrator.dlq import dead_letter_count, list_dead_letters, render_dead_letters

    client = connect(require_broker(broker))
    click.echo(render_dead_letters(list_dead_letters(client, limit), dead_letter_count(client),
                                   as_json))  # fmt: skip


@dlq_group.command("purge")
@click.option("--broker", envvar="ORCH_BROKER_URL", default=None, help=BROKER_HELP)
def dlq_purge(broker: str | None) -> None:
    """Drop every dead letter."""
    from orchestrator.broker import connect
    from orchestrator.dlq import purge_dead_letters

    dropped = purge_dead_letters(connect(require_broker(broker)))
    click.echo(f"{dropped} dead letter(s) dropped")
