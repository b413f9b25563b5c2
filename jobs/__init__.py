"""The contract between the coordinator (`orchestrator`) and the test boxes (`worker`).

Both sides import this package; it imports neither. Everything that crosses a process, a queue
or a file is a pydantic model defined here, and carries `SCHEMA_VERSION`.
"""

from __future__ import annotations

from jobs.version import ORCH_VERSION, SCHEMA_VERSION

__all__ = ["ORCH_VERSION", "SCHEMA_VERSION"]
