"""How long the coordinator's commands wait for a broker that stopped answering (a restart).

Apart from `orchestrator.outage`, which builds redis-py's retry on it, so that the CLI can
offer and set `--broker-outage` without importing redis-py: every `orch` command, `--help`
included, parses that option.
"""

from __future__ import annotations

import os

from orchestrator.errors import BrokerError

DEFAULT_OUTAGE_S = 60.0
OUTAGE_ENV = "ORCH_BROKER_OUTAGE_S"
_limit_s: float | None = None  # set by the CLI's --broker-outage


def set_outage_limit(seconds: float | None) -> None:
    """The CLI's `--broker-outage` (None: back to `$ORCH_BROKER_OUTAGE_S` or the default)."""
    global _limit_s
    _limit_s = seconds


def outage_limit_s() -> float:
    """Seconds a command waits for a broker that stopped answering, before it gives up."""
    if _limit_s is not None:
        return _limit_s
    raw = os.environ.get(OUTAGE_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_OUTAGE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise BrokerError(f"${OUTAGE_ENV} is {raw!r}: give seconds, 0 or more (default 60)")
    return value
