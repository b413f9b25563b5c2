"""Engine adapters, one module each, registered by name (see `base.register`)."""

from __future__ import annotations

from worker.engines import llama_bench, llama_server  # noqa: F401  (register themselves)
from worker.engines.base import (
    Engine,
    EngineOutcome,
    RunTarget,
    close_engines,
    get_engine,
    registered,
)

__all__ = ["Engine", "EngineOutcome", "RunTarget", "close_engines", "get_engine", "registered"]
