"""`orch campaigns`: the store's history, one line per campaign."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The job models (pydantic) and tabulate are imported where there are jobs to parse or rows
# to print: `orch campaigns` on an empty store starts without them.
if TYPE_CHECKING:
    from jobs.spec import JobSpec
    from orchestrator.store import CampaignOverview, Store
    from orchestrator.waiting import Blocked


def campaign_status(c: CampaignOverview, blocked: list[Blocked] | None = None) -> str:
    """done / done, N failed / running / queued / cancelled / empty, in words; with `blocked`
    (every waiting job waits for a human), what it waits for: `waiting for reboot into
    vram_split=512M`, `waiting for halo (offline)`."""
    if c.total == 0:
        return "empty"
    if c.waiting and blocked:
        reboots = sorted({b.wanted for b in blocked if b.kind == "reboot"})
        parts = [f"reboot into {' / '.join(reboots)}"] if reboots else []
        parts += sorted({f"{b.host} ({b.kind})" for b in blocked if b.kind != "reboot"})
        return "waiting for " + ", ".join(parts)
    if c.waiting:
        return "running" if c.finished else "queued"
    if c.cancelled:
        return "cancelled"
    return f"done, {c.failed} failed" if c.failed else "done"


def blocked_by_campaign(store: Store, fleet: Any, now: float) -> dict[str, list[Blocked]]:
    """campaign -> what its waiting jobs wait for, for campaigns where every one waits for a
    human (none of them will start by itself)."""
    from orchestrator.waiting import blocked_on

    pending: dict[str, list[JobSpec]] = {}
    for job in store.pending_jobs():
        pending.setdefault(job.campaign, []).append(job)
    out = {}
    for campaign, jobs in pending.items():
        found = [blocked_on(j, fleet.inventories.get(j.host), now) for j in jobs]
        if all(b is not None for b in found):
            out[campaign] = [b for b in found if b is not None]
    return out


def render_campaigns(store: Store, blocked: dict[str, list[Blocked]] | None = None) -> str:
    overview = store.campaign_overview()
    blocked = blocked or {}
    if not overview:
        return f"no campaigns in {store.path} yet: `orch submit MATRIX` or `orch import`"
    from tabulate import tabulate

    headers = ["campaign", "created", "last result", "hosts", "jobs", "done", "ok", "failed",
               "skipped", "waiting", "status"]  # fmt: skip
    body = [
        [
            c.campaign,
            _day(c.created_at),
            _day(c.last_result_at) if c.last_result_at else "-",
            ", ".join(c.hosts) or "-",
            c.total,
            c.finished,
            c.ok,
            c.failed,
            c.skipped,
            c.waiting,
            campaign_status(c, blocked.get(c.campaign)),
        ]
        for c in overview
    ]
    return tabulate(body, headers, tablefmt="simple", disable_numparse=True)


def _day(timestamp: str) -> str:
    """`2026-01-15T09:04:00+00:00` -> `2026-01-15 09:04` (UTC, as stored)."""
    return timestamp[:16].replace("T", " ")
