"""Runtime setters: settings a worker may change around a job, because its owner allowed it.

A job names only a setting and a value (`{"platform_profile": "low-power"}`); how it is set,
and within which bounds, comes from the box's own config (`setters:` in worker.yaml). A setting
the config does not list is never touched: nothing in a queued message can make a box run a
command or write a file it was not told to.

Example::

    @register_setter("platform_profile", "sysfs")
    class SysfsPlatformProfile(Setter):
        def read(self): ...
        def apply(self, value): ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from jobs.inventory import SetterInfo
from worker.config import SetterConfig
from worker.errors import ConfigError


class Setter(ABC):
    """One runtime setting on this box, set one way."""

    axis = ""  # the JobSpec.settings key: "platform_profile", "power_limit_w"
    method = ""  # "sysfs", "hwmon", "command"

    def __init__(self, config: SetterConfig, root: Path) -> None:
        self.config = config
        self.root = root

    @abstractmethod
    def read(self) -> str | None:
        """The current value as the job spells it; None when this method cannot read it."""

    @abstractmethod
    def apply(self, value: str) -> None:
        """Set `value`; raise SettingError with the box's own words when that fails."""

    def restore_value(self, previous: str | None) -> str | None:
        """What to put back after the job: what was read before, by default."""
        return previous

    def check(self, value: str) -> str | None:
        """Why `value` is not allowed here (outside the owner's bounds), or None."""
        info = self.info()
        if info.choices and value not in info.choices:
            return f"{self.axis} {value!r} is not one of {', '.join(info.choices)}"
        if info.min_w is not None or info.max_w is not None:
            watts = float(value)
            low, high = info.min_w or 0.0, info.max_w or float("inf")
            if not low <= watts <= high:
                return f"{self.axis} {value} W is outside the allowed {low:g}-{high:g} W"
        return None

    def info(self) -> SetterInfo:
        """What the inventory tells the coordinator (so a bad value is refused at submit)."""
        return SetterInfo(method=self.method, min_w=self.config.min_w, max_w=self.config.max_w)


S = TypeVar("S", bound=type[Setter])
_REGISTRY: dict[tuple[str, str], type[Setter]] = {}


def register_setter(axis: str, method: str) -> Callable[[S], S]:
    def decorate(cls: S) -> S:
        cls.axis, cls.method = axis, method
        _REGISTRY[(axis, method)] = cls
        return cls

    return decorate


def registered_setters() -> list[tuple[str, str]]:
    """(axis, method) of every setter, for tests parametrised over the family."""
    return sorted(_REGISTRY)


def build_setters(configs: Mapping[str, SetterConfig], root: Path) -> dict[str, Setter]:
    """The setters a worker config allows, by axis."""
    out = {}
    for axis, config in configs.items():
        cls = _REGISTRY.get((axis, config.method))
        if cls is None:
            methods = sorted(m for a, m in _REGISTRY if a == axis)
            raise ConfigError(f"setters.{axis}: no method {config.method!r} (have: {methods})")
        out[axis] = cls(config, root)
    return out
