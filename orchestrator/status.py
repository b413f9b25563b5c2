"""`orch status`: which hosts are online in which configuration, and how campaigns progress."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The broker's side (redis-py, Celery, kombu) is imported where a broker was given, and
# tabulate (importlib.metadata, wcwidth) where there is a table: `orch status` with nothing
# to show starts without them.
if TYPE_CHECKING:
    from orchestrator.broker import Fleet
    from orchestrator.store import Store


def render_status(store: Store, client: Any | None, campaign: str | None) -> str:
    out: list[str] = []
    fleet, now = _fleet_now(client) if client is not None else (None, 0.0)
    if client is not None and fleet is not None:
        from orchestrator.dlq import dead_letter_count
        from orchestrator.waiting import blocked_notes

        out += _hosts(client, fleet, now, store)  # reading the queues dead-letters junk
        dead = dead_letter_count(client)
        if dead:
            out.append(f"dead letters: {dead} refused message(s) (see `orch dlq list`)")
        if not campaign:  # with one, the campaign's own notes follow below
            pending = [j for j in store.pending_jobs() if j.host in fleet.inventories]
            out += blocked_notes(pending, fleet.inventories, now)
            out += _plan_lines(pending, fleet)
    else:
        out.append("hosts: unknown (no broker given: pass --broker or set ORCH_BROKER_URL)")
    rejected = store.rejected_count()
    if rejected:
        out.append(
            f"warning: {rejected} result(s) could not be read by this orch (a worker runs a "
            "newer one?): upgrade this coordinator, they are kept and read again"
        )
    out.append("")
    if campaign:
        out += _campaign(store, campaign, fleet, now)
    else:
        rows = [
            [c.campaign, c.created_at, c.total, c.finished, c.ok, c.cancelled, c.waiting]
            for c in store.campaign_overview()
        ]
        headers = ["campaign", "created (UTC)", "jobs", "finished", "ok", "cancelled", "waiting"]
        out.append(_table(rows, headers) if rows else "no campaigns yet")
    return "\n".join(out)


def _fleet_now(client: Any) -> tuple[Fleet, float]:
    from orchestrator.broker import broker_time, read_fleet

    return read_fleet(client), broker_time(client)


def _hosts(client: Any, fleet: Fleet, now: float, store: Store) -> list[str]:
    """One row per host and configuration: online or not, which one it runs now, and its jobs
    done / running / waiting there (done from this store, all campaigns; the rest from the
    broker)."""
    from jobs.spec import host_of_queue
    from orchestrator.broker import queue_counts

    rows: list[list[Any]] = []
    waiting, running = queue_counts(client)
    done = store.done_by_queue()
    names = store.config_names_by_queue()
    for host, reason in sorted(fleet.unreadable.items()):
        rows.append([host, f"unreadable: {reason}", "", "", "", "", ""])
    for host, inv in sorted(fleet.inventories.items()):
        engines = "; ".join(f"{e} [{', '.join(b)}]" for e, b in sorted(inv.engines.items()))
        state = "online" if inv.online(now) else f"offline ({now - inv.last_seen:.0f} s)"
        queues = {inv.queue} | {q for q in (*waiting, *running, *done) if host_of_queue(q) == host}
        for queue in sorted(queues, key=lambda q: (q != inv.queue, q)):
            current = queue == inv.queue
            rows.append(
                [
                    host if current else "",
                    state if current else "",
                    _configuration_label(queue, names.get(queue, []))
                    + (_now_mark(inv, now) if current else ""),
                    done.get(queue, 0),
                    running.get(queue, 0),
                    waiting.get(queue, 0),
                    engines if current else "",
                ]
            )
    if not rows:
        return ["hosts: none registered yet (start `orch worker` on each box)"]
    headers = ["host", "state", "configuration", "done", "running", "waiting", "engines"]
    return [_table(rows, headers, disable_numparse=True), *progress_lines(client, fleet, now)]


def progress_lines(client: Any, fleet: Fleet, now: float) -> list[str]:
    """`halo: job 1a2b (c1): repetition 3 of 10, 12 s, ...` for each online host with a job
    under way (jobs/progress.py; a malformed or expired record shows nothing)."""
    from jobs.progress import Phase, read_progress

    out = []
    for host, inv in sorted(fleet.inventories.items()):
        if not inv.online(now):
            continue
        progress = read_progress(client, host)
        if progress is not None and progress.phase is not Phase.IDLE:
            out.append(f"{host}: {progress.text(now)}")
    return out


def _table(rows: list[list[Any]], headers: list[str], **options: Any) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers, tablefmt="simple", **options)


def _now_mark(inv: Any, now: float) -> str:
    """`(now)` only for a box that is up: an offline one may have rebooted into anything."""
    if inv.online(now):
        return " (now)"
    if inv.reconfigure is not None and inv.reconfigure.rebooting(now):
        from jobs.spec import configuration_label

        into = configuration_label(inv.reconfigure.rebooting_into or {})
        return f" (last; rebooting into {into})"
    return " (last seen)"


def _configuration_label(queue: str, names: list[str]) -> str:
    """`orch.halo.vram-512M` -> `vram-512M`, with the matrix's names for it (`quiet-512m,
    fast-512m`: configurations that differ only in runtime settings share a queue)."""
    label = queue.rsplit(".", 1)[-1]
    return f"{label}: {', '.join(names)}" if names else label


def _campaign(store: Store, campaign: str, fleet: Fleet | None, now: float) -> list[str]:
    store.require_campaign(campaign)
    # Counted in SQL (Store.campaign_progress): no stored result is parsed, at any store size.
    progress = store.campaign_progress(campaign)
    states = sorted({s for counts in progress.by_queue.values() for s in counts})
    rows = [[queue, *(counts.get(s, 0) for s in states)]
            for queue, counts in progress.by_queue.items()]  # fmt: skip
    disturbed = progress.disturbed
    out = [
        f"campaign {campaign}: {progress.finished}/{progress.total} jobs finished"
        + (f" ({disturbed} disturbed: no verdict drawn from them)" if disturbed else "")
        + f"; server model loads: {progress.loads} for {progress.load_groups} group(s) of jobs "
        "that can share one",
        _table(rows, ["queue", *states]),
    ]
    from orchestrator.eta import campaign_eta

    out.append(campaign_eta(store.pending_jobs(campaign), store.durations()).text())
    if fleet is not None:
        from orchestrator.waiting import blocked_notes

        pending = [j for j in store.pending_jobs(campaign) if j.host in fleet.inventories]
        out += blocked_notes(pending, fleet.inventories, now)
        out += _plan_lines(pending, fleet)
    return out


def _plan_lines(pending: list[Any], fleet: Fleet) -> list[str]:
    """The configurations each host still has to visit, and how its unattended switching
    stands (the last switch, campaigns it stopped for)."""
    from orchestrator.waiting import visit_lines

    out = visit_lines(pending, fleet.inventories)
    for host in sorted({j.host for j in pending}):
        inv = fleet.inventories.get(host)
        rec = inv.reconfigure if inv is not None else None
        if rec is None:
            continue
        if rec.last_outcome:
            out.append(f"{host}: last unattended switch: {rec.last_outcome}")
        for campaign, why in sorted(rec.blocked.items()):
            out.append(f"{host}: unattended switching stopped for {campaign}: {why}")
    return out
