"""Where orch keeps things on a box (both sides agree, so the demo finds what a box built)."""

from __future__ import annotations

import os
from pathlib import Path


def orch_home() -> Path:
    """Cache root for engines, models and single-box data: `$ORCH_HOME`, else `~/.cache/orch`."""
    return Path(os.environ.get("ORCH_HOME") or Path.home() / ".cache" / "orch")
