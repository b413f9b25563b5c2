"""The contract between the coordinator (`orchestrator`) and the test boxes (`worker`).

Both sides import this package; it imports neither. Everything that crosses a process, a queue
or a file is a pydantic model defined here, and carries `SCHEMA_VERSION`.
"""

from __future__ import annotations

from jobs.version import SCHEMA_VERSION

__all__ = ["ORCH_VERSION", "SCHEMA_VERSION"]


def __getattr__(name: str) -> str:
    """`jobs.ORCH_VERSION`, looked up on first use (see `jobs.version.__getattr__`)."""
    if name != "ORCH_VERSION":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from jobs import version

    return version.ORCH_VERSION
