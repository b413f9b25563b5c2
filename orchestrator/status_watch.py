"""`orch status --watch`: `orch status` redrawn every few seconds, with campaign progress bars
and ETAs, until Ctrl-C (exit 0).

On a terminal the screen is redrawn in place (plain ANSI: cursor home, clear to the end); when
stdout is not a terminal (a pipe, a log file) each refresh is printed as a plain snapshot after
the last, with no escape codes at all.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from orchestrator.store import Store

_HOME_CLEAR = "\x1b[H"  # cursor to the top left; each line then clears its own rest
_CLEAR_LINE = "\x1b[K"
_CLEAR_BELOW = "\x1b[J"
_BAR_WIDTH = 20


def watch_status(
    store: Store,
    client: Any | None,
    campaign: str | None,
    interval_s: float,
    out: TextIO,
    *,
    rounds: int | None = None,
) -> None:
    """Redraw the status every `interval_s` until Ctrl-C (or `rounds` redraws, for callers that
    want a fixed number)."""
    tty = out.isatty()
    drawn = 0
    try:
        if tty:
            out.write("\x1b[2J")
        while rounds is None or drawn < rounds:
            text = snapshot(store, client, campaign, interval_s)
            if tty:
                lines = text.split("\n")
                out.write(_HOME_CLEAR + "".join(f"{line}{_CLEAR_LINE}\n" for line in lines))
                out.write(_CLEAR_BELOW)
            else:
                out.write(text + "\n\n")
            out.flush()
            drawn += 1
            if rounds is None or drawn < rounds:
                time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    finally:
        if tty:
            out.write("\n")
            out.flush()


def snapshot(store: Store, client: Any | None, campaign: str | None, interval_s: float) -> str:
    """One screen: a header line, the status, then each unfinished campaign's bar and ETA."""
    from orchestrator.status import render_status

    if client is not None and not store.read_only:
        store.collect(client)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    header = f"orch status --watch: {stamp}, every {interval_s:g} s (Ctrl-C to stop)"
    body = render_status(store, client, campaign)
    return "\n".join([header, "", body, *campaign_bars(store, campaign)])


def campaign_bars(store: Store, campaign: str | None) -> list[str]:
    """`c1  [########------------]  8/20  ETA ~3 min (estimate: n=12 earlier runs)` for the
    campaign asked about, or every campaign with jobs left."""
    from orchestrator.eta import campaign_eta

    overview = [
        c for c in store.campaign_overview()
        if (c.campaign == campaign if campaign else c.finished + c.cancelled < c.total)
    ]  # fmt: skip
    if not overview:
        return []
    durations = store.durations()
    out = [""]
    for c in overview:
        done = c.finished + c.cancelled
        filled = round(_BAR_WIDTH * done / c.total) if c.total else _BAR_WIDTH
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        eta = campaign_eta(store.pending_jobs(c.campaign), durations).text()
        out.append(f"{c.campaign}  [{bar}]  {c.finished}/{c.total}  {eta}")
    return out
