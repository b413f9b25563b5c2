"""The telemetry source interface and its registry.

A source reads one kind of counter on this box (amdgpu sysfs, DRM fdinfo, RAPL, NVML, psutil)
and turns it into metrics named with their unit (see `jobs.telemetry`). It never raises for a
missing device: `probe()` says whether it can be read here and, if not, why.

Example::

    @register_source("rapl")
    class Rapl(Source):
        def probe(self) -> SourceStatus: ...
        def sample(self, now: float) -> dict[str, float]: ...

Every source takes a filesystem `root` (`/` on a real box, a fixture tree in tests); sources that
read through a library instead (NVML, psutil) accept it and ignore it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, TypeVar

from jobs.telemetry import SourceStatus
from worker.platform import current_platform

# The unit suffixes a metric name may end with; a test checks every source against them.
METRIC_UNITS = ("_pct", "_bytes", "_w", "_c")


class Source(ABC):
    """One telemetry source. `sample` may keep state (counters become rates between calls)."""

    name: ClassVar[str] = ""
    precedence: ClassVar[int] = 100  # lower wins when two sources give the same metric
    # The platforms (worker.platform.current_platform) the source can exist on; empty: any.
    platforms: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root

    @abstractmethod
    def probe(self) -> SourceStatus:
        """Whether this source can be read on this box; called once before sampling starts."""

    @abstractmethod
    def sample(self, now: float) -> dict[str, float]:
        """Read the source at `now` (seconds, the sampler's clock): metric name -> value.

        Rates (busy %, power from an energy counter) need two reads, so the first call after
        probe() or watch() may return fewer metrics.
        """

    def watch(self, pid: int) -> None:  # noqa: B027  (optional: only per-process sources care)
        """Follow process `pid` and its children from now on (system-wide sources ignore it)."""

    def close(self) -> None:  # noqa: B027  (optional: only library sources hold a handle)
        """Release what probe() opened."""

    def status(
        self, available: bool, detail: str | None, power_includes_cpu: bool | None = None
    ) -> SourceStatus:
        return SourceStatus(
            name=self.name,
            available=available,
            detail=detail,
            power_includes_cpu=power_includes_cpu,
        )


_REGISTRY: dict[str, type[Source]] = {}

S = TypeVar("S", bound=type[Source])


def register_source(
    name: str, precedence: int = 100, platforms: tuple[str, ...] = ()
) -> Callable[[S], S]:
    """Class decorator: make a source available under `name`.

    When two sources report the same metric (NVML and amdgpu both give `power_w`), the sampler
    keeps the one with the lower `precedence`. `platforms` ("linux", "windows", "macos") limits
    where `default_sources` starts it; on other boxes it is still there by name (`orch doctor`
    asks it why it cannot run).
    """

    def decorate(cls: S) -> S:
        cls.name = name
        cls.precedence = precedence
        cls.platforms = platforms
        _REGISTRY[name] = cls
        return cls

    return decorate


def registered_sources() -> list[str]:
    """Names of every registered source, in precedence order."""
    return [cls.name for cls in _ordered()]


def _ordered() -> list[type[Source]]:
    return sorted(_REGISTRY.values(), key=lambda cls: (cls.precedence, cls.name))


def get_source(name: str, root: Path = Path("/")) -> Source:
    try:
        return _REGISTRY[name](root)
    except KeyError:
        known = ", ".join(registered_sources())
        raise KeyError(f"no telemetry source named {name!r} (have: {known})") from None


def platform_sources(sys_platform: str | None = None) -> list[str]:
    """Names of the sources a box of this platform (or `sys_platform`'s) starts, in order."""
    here = current_platform(sys_platform)
    return [cls.name for cls in _ordered() if not cls.platforms or here in cls.platforms]


def default_sources(root: Path = Path("/"), sys_platform: str | None = None) -> list[Source]:
    """One instance of every source this platform can have; the sampler probes each and skips
    the absent (a Windows box never starts the sysfs sources, Linux never the PDH one)."""
    names = set(platform_sources(sys_platform))
    return [cls(root) for cls in _ordered() if cls.name in names]


class Every:
    """Says when something read less often than every sample is due again.

    For slow quantities whose read is dear: system memory (the kernel builds /proc/meminfo on
    each read), GPU memory and temperature over NVML, the process tree.
    """

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._at: float | None = None

    def due(self, now: float) -> bool:
        """True on the first call and once `period_s` has passed (or the clock went back)."""
        if self._at is not None and 0 <= now - self._at < self.period_s:
            return False
        self._at = now
        return True

    def reset(self) -> None:
        self._at = None


def why_unreadable(path: Path) -> str:
    """A short reason for an unreadable file, for SourceStatus.detail."""
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except PermissionError:
        return f"{path} is not readable by this user"
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return f"{path} holds no number"
