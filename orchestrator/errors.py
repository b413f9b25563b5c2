"""Errors the coordinator raises on purpose; the CLI prints them and exits non-zero.

OrchError                   base: a message for the user, exit code 2
├── ProblemsError           every problem at once, one line each
│   ├── MatrixError         the matrix file is invalid (file:line: key)
│   ├── SubmitError         the matrix is valid but cannot run (unknown host/model/backend)
│   └── InventoryError      the fleet inventory (fleet.yaml) is invalid (file:line: key)
├── BrokerError             the broker cannot be reached or refused us
├── WaitingForHumanError    --wait: every job left needs a reboot or a worker (exit code 4)
├── StoreError              the result store cannot be opened or is from a newer orch
├── FleetError              a fleet command cannot start at all (no such host, no wheel)
└── HostError               one box failed (unreachable, auth failed, no Python 3.11, disk
                            full...): it becomes that host's row, the other hosts go on
"""

from __future__ import annotations


class OrchError(Exception):
    """Base of every coordinator error meant for the user."""

    exit_code = 2


# The most problems one error lists: a generated file can repeat a mistake hundreds of
# thousands of times, and the first few say what to fix.
MAX_PROBLEMS_SHOWN = 50


class ProblemsError(OrchError):
    """Every problem found at once; `problems` holds one line per problem, the first
    MAX_PROBLEMS_SHOWN of them and then a line counting the rest; `total` counts them all."""

    def __init__(self, problems: list[str]) -> None:
        self.total = len(problems)
        if self.total > MAX_PROBLEMS_SHOWN:
            rest = self.total - MAX_PROBLEMS_SHOWN
            problems = [
                *problems[:MAX_PROBLEMS_SHOWN],
                f"... and {rest:,} more problems ({self.total:,} in all): fix these and retry",
            ]
        self.problems = problems
        super().__init__("\n".join(problems))


class MatrixError(ProblemsError):
    """One or more problems in a matrix file (file:line: key)."""


class SubmitError(ProblemsError):
    """The matrix asks for hosts, models or backends the fleet does not have."""


class BrokerError(OrchError):
    """The broker (Redis) is unreachable or misconfigured."""


class WaitingForHumanError(OrchError):
    """`--wait` stopped: nothing left can run until someone reboots a box or starts a worker."""

    exit_code = 4  # documented in the README (One box); orchestrator.waiting has the rule


class StoreError(OrchError):
    """The result store cannot be used."""


class InventoryError(ProblemsError):
    """One or more problems in a fleet inventory (file:line: key)."""


class FleetError(OrchError):
    """A fleet command that cannot start (a host failing on its own is reported in its row)."""


class HostError(OrchError):
    """One box of the fleet failed; `reason` is the short kind shown in the table."""

    def __init__(self, host: str, reason: str, detail: str) -> None:
        self.host = host
        self.reason = reason
        self.detail = detail
        super().__init__(f"{host}: {reason}: {detail}")
