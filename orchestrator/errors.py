"""Errors the coordinator raises on purpose; the CLI prints them and exits non-zero.

OrchError                   base: a message for the user, exit code 2
├── MatrixError             the matrix file is invalid (every problem, each with file:line: key)
├── SubmitError             the matrix is valid but cannot run (unknown host/model/backend)
├── BrokerError             the broker cannot be reached or refused us
└── StoreError              the result store cannot be opened or is from a newer orch
"""

from __future__ import annotations


class OrchError(Exception):
    """Base of every coordinator error meant for the user."""

    exit_code = 2


class MatrixError(OrchError):
    """One or more problems in a matrix file; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class SubmitError(OrchError):
    """The matrix asks for hosts, models or backends the fleet does not have."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class BrokerError(OrchError):
    """The broker (Redis) is unreachable or misconfigured."""


class StoreError(OrchError):
    """The result store cannot be used."""
