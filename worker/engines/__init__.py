"""Engine adapters, one module each, registered by name (see `base.register`)."""

from __future__ import annotations

from worker.engines import (  # noqa: F401  (each registers itself)
    llama_bench,
    llama_server,
    lmstudio,
    ollama,
    openai_compat,
)
from worker.engines.base import (
    Engine,
    EngineOutcome,
    RunTarget,
    close_engines,
    get_engine,
    registered,
)

__all__ = ["Engine", "EngineOutcome", "RunTarget", "close_engines", "get_engine", "registered"]
