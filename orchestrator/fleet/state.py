"""What the last deploy installed on a box (`state.json` in the deploy folder).

A second deploy compares it with what it would install: same wheel content, same wheelhouse,
same Python and service mode -> no reinstall.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.fleet.remote import Box
from orchestrator.fleet.units import Layout

# 1: first version
STATE_FORMAT = 1


class DeployState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = STATE_FORMAT
    orch_version: str
    orch_fingerprint: str  # sha256 of the wheel's RECORD
    wheelhouse: list[str]  # wheel files installed offline; [] = dependencies from the index
    python: str  # the interpreter the venv was made with, as the inventory names it
    mode: str  # units.Mode
    deployed_at: float = Field(default_factory=time.time)

    def same_install(self, other: DeployState) -> bool:
        keys = ("orch_fingerprint", "wheelhouse", "python")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


def read_state(box: Box, layout: Layout) -> DeployState | None:
    """The box's state, or None when there is none or it is unreadable (deploy afresh)."""
    raw = box.read(layout.state)
    if raw is None:
        return None
    try:
        state = DeployState.model_validate_json(raw)
    except ValidationError:
        return None
    return state if state.format == STATE_FORMAT else None
