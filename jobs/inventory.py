"""What a worker tells the coordinator about itself (published on start and by heartbeat)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from jobs.facts import HostFacts
from jobs.modelshape import ModelShape
from jobs.protocol import ONLINE_WITHIN_S, REBOOT_GRACE_S
from jobs.version import SCHEMA_VERSION


class SetterInfo(BaseModel):
    """A runtime setting this box's owner allows jobs to change, and its bounds."""

    model_config = ConfigDict(extra="forbid")

    method: str  # "sysfs", "hwmon", "command"
    choices: list[str] = Field(default_factory=list)  # platform_profile: what the firmware offers
    min_w: float | None = None  # power_limit_w bounds
    max_w: float | None = None


class ReconfigureInfo(BaseModel):
    """A box whose owner lets its agent switch reboot-bound settings itself (worker.yaml
    `reconfigure:`), and where that stands: the coordinator keeps waiting for jobs such a box
    will reach by itself, and says why it stopped when it will not."""

    model_config = ConfigDict(extra="forbid")

    axes: list[str] = Field(default_factory=list)  # configuration axes it can switch
    # axis -> the values it can switch to; an axis set by a command takes any value (absent).
    values: dict[str, list[str]] = Field(default_factory=dict)
    max_reboots_per_campaign: int = 4
    restore: bool = False
    reboots: dict[str, int] = Field(default_factory=dict)  # campaign -> reboots so far
    blocked: dict[str, str] = Field(default_factory=dict)  # campaign -> why no more switches
    last_outcome: str | None = None  # the last switch, in words
    # Why the agent does not switch for the work waiting now, when that needs a human (a
    # password file it may not read, an attribute it cannot write, a blocked campaign at the
    # head of the queue, an unreadable journal): the coordinator stops waiting on it.
    stalled: str | None = None
    # Set just before the agent runs the reboot command (broker clock), cleared by the next
    # agent: an offline box that is rebooting is expected back.
    rebooting_into: dict[str, str] | None = None
    rebooting_since: float | None = None

    def refusal(
        self, configuration: dict[str, str], current: dict[str, str], campaign: str
    ) -> str | None:
        """Why this box will not switch itself from `current` into `configuration` for a job of
        `campaign`, or None when it will (the agent applies the same rule)."""
        if campaign in self.blocked:
            return self.blocked[campaign]
        for axis in sorted(set(configuration) | set(current)):
            wanted = configuration.get(axis)
            if wanted == current.get(axis):
                continue
            if axis not in self.axes or wanted is None:
                return f"its owner does not let it switch {axis} by itself"
            if axis in self.values and wanted not in self.values[axis]:
                return f"it can switch {axis} to {', '.join(self.values[axis])}, not {wanted}"
        if self.reboots.get(campaign, 0) >= self.max_reboots_per_campaign:
            return f"it rebooted {self.reboots[campaign]} time(s) for {campaign}, its owner's limit"
        return None

    def rebooting(self, now: float) -> bool:
        """Announced a reboot recently enough to be expected back."""
        since = self.rebooting_since
        return since is not None and 0 <= now - since <= REBOOT_GRACE_S


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
    reconfigure: ReconfigureInfo | None = None  # unattended reconfiguration, when allowed
    # The agent holds the box's lease but runs nothing until these earlier holders exit: they
    # lost the lease (frozen, cut off from the broker) yet still run on the box.
    waiting_for: str | None = None

    def online(self, now: float) -> bool:
        """Alive: not stopped, and seen within a few heartbeats (`now` on the broker's clock)."""
        return not self.stopped and now - self.last_seen <= ONLINE_WITHIN_S
