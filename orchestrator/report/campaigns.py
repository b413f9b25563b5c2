"""`orch campaigns`: the store's history, one line per campaign."""

from __future__ import annotations

from tabulate import tabulate

from orchestrator.store import CampaignOverview, Store


def campaign_status(c: CampaignOverview) -> str:
    """done / done, N failed / running / queued / cancelled / empty, in words."""
    if c.total == 0:
        return "empty"
    if c.waiting:
        return "running" if c.finished else "queued"
    if c.cancelled:
        return "cancelled"
    return f"done, {c.failed} failed" if c.failed else "done"


def render_campaigns(store: Store) -> str:
    overview = store.campaign_overview()
    if not overview:
        return f"no campaigns in {store.path} yet: `orch submit MATRIX` or `orch import`"
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
            campaign_status(c),
        ]
        for c in overview
    ]
    return tabulate(body, headers, tablefmt="simple", disable_numparse=True)


def _day(timestamp: str) -> str:
    """`2026-01-15T09:04:00+00:00` -> `2026-01-15 09:04` (UTC, as stored)."""
    return timestamp[:16].replace("T", " ")
