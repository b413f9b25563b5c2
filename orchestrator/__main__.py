"""`python -m orchestrator` is the `orch` command (used to start child commands portably)."""

from __future__ import annotations

from orchestrator.cli import main

main()
