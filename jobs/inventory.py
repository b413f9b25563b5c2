"""What a worker tells the coordinator about itself (published on start and by heartbeat)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobs.facts import HostFacts
from jobs.modelshape import ModelShape
from jobs.protocol import ONLINE_WITHIN_S
from jobs.version import SCHEMA_VERSION


class SetterInfo(BaseModel):
    """A runtime setting this box's owner allows jobs to change, and its bounds."""

    model_config = ConfigDict(extra="forbid")

    method: str  # "sysfs", "hwmon", "command"
    choices: list[str] = Field(default_factory=list)  # platform_profile: what the firmware offers
    min_w: float | None = None  # power_limit_w bounds
    max_w: float | None = None


class WorkerInventory(BaseModel):
    """A host's declared facts, engines and models, as its worker sees them now."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    host: str
    queue: str
    configuration: dict[str, str] = Field(default_factory=dict)
    declared: dict[str, Any] = Field(default_factory=dict)
    engines: dict[str, list[str]] = Field(default_factory=dict)  # engine -> backends
    models: list[str] = Field(default_factory=list)  # the box's model files (binary engines)
    engine_models: dict[str, list[str]] = Field(default_factory=dict)  # server engines' models
    images: list[str] = Field(default_factory=list)  # what `workload.image` may name
    setters: dict[str, SetterInfo] = Field(default_factory=dict)  # runtime settings allowed
    # GGUF shapes of the box's model files, so the coordinator can plan without the files.
    model_shapes: dict[str, ModelShape] = Field(default_factory=dict)

    def models_for(self, engine: str) -> list[str]:
        return self.engine_models.get(engine, self.models)

    version: str
    instance_id: str
    pid: int
    started_at: float
    last_seen: float
    clock_skew_s: float | None = None  # broker clock minus this box's clock, at start
    stopped: bool = False  # the agent shut down cleanly (a crash leaves this False)
    facts: HostFacts | None = None  # what the agent detected on the box at start

    def online(self, now: float) -> bool:
        """Alive: not stopped, and seen within a few heartbeats (`now` on the broker's clock)."""
        return not self.stopped and now - self.last_seen <= ONLINE_WITHIN_S
