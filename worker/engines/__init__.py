"""Engine adapters, one module each, registered by name (see `base.register`)."""

from __future__ import annotations

from worker.engines import llama_bench  # noqa: F401  (registers "llama-bench")
from worker.engines.base import Engine, EngineOutcome, RunTarget, get_engine, registered

__all__ = ["Engine", "EngineOutcome", "RunTarget", "get_engine", "registered"]
