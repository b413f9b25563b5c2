"""The cool-down gate: before a job, wait until the GPU is cool and idle again.

An 80 W laptop that just finished a long run starts the next one hot and throttles; its figures
then depend on the order of the matrix. The gate polls the telemetry sources that read
temperature and power (amdgpu hwmon, NVML, RAPL) until every configured reading has stayed at
or below its threshold for `settle_s`, or `timeout_s` passes; the job runs either way and the
result says which (`RunResult.cooldown`).

Example::

    with CooldownGate(config.cooldown, root=config.facts_root) as gate:
        ...                    # the measured run
    result.cooldown = gate.record
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from jobs.result import Cooldown
from worker.config import CooldownConfig
from worker.telemetry.base import Source, get_source

log = logging.getLogger("orch.worker")

# Sources that report gpu_temp_c and a power figure; per-process ones have nothing to say here.
_SOURCES = ("amdgpu", "nvml", "rapl")


class CooldownGate:
    """Context manager: waits on enter (see the module docstring); `record` says how it went."""

    def __init__(
        self,
        config: CooldownConfig,
        root: Path = Path("/"),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        source_names: tuple[str, ...] = _SOURCES,
    ) -> None:
        self.config = config
        self.source_names = source_names
        self.root = root
        self.clock = clock
        self.sleep = sleep
        self.record: Cooldown | None = None

    def __enter__(self) -> CooldownGate:
        self.record = self.wait()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def missing_readings(self) -> list[str]:
        """Thresholds no source on this box can read (the gate would always time out)."""
        sources = self._sources()
        try:
            temp, power = self._read(sources, self.clock())
            if power is None and any(s.name == "rapl" for s in sources):
                self.sleep(0.2)  # RAPL gives power from two energy readings
                temp, power = self._read(sources, self.clock())
        finally:
            for source in sources:
                source.close()
        missing = []
        if self.config.max_gpu_temp_c is not None and temp is None:
            missing.append("max_gpu_temp_c (no GPU temperature)")
        if self.config.max_power_w is not None and power is None:
            missing.append("max_power_w (no power reading)")
        return missing

    def wait(self) -> Cooldown:
        sources = self._sources()
        cfg = self.config
        start = self.clock()
        calm_since: float | None = None
        temp = power = None
        try:
            while True:
                now = self.clock()
                temp, power = self._read(sources, now)
                if self._calm(temp, power):
                    calm_since = now if calm_since is None else calm_since
                    if now - calm_since >= cfg.settle_s:
                        return self._done(start, True, temp, power, sources)
                else:
                    calm_since = None
                if now - start >= cfg.timeout_s:
                    log.warning(
                        "cool-down gave up after %.0f s (GPU %s °C, %s W): running anyway",
                        cfg.timeout_s, temp, power,
                    )  # fmt: skip
                    return self._done(start, False, temp, power, sources)
                self.sleep(cfg.poll_s)
        finally:
            for source in sources:
                source.close()

    def _sources(self) -> list[Source]:
        found = []
        for name in self.source_names:
            source = get_source(name, self.root)
            if source.probe().available:
                found.append(source)
            else:
                source.close()
        return found

    def _read(self, sources: list[Source], now: float) -> tuple[float | None, float | None]:
        readings = [source.sample(now) for source in sources]
        temps = [r["gpu_temp_c"] for r in readings if "gpu_temp_c" in r]
        # GPU board power (or APU package power) first, RAPL's CPU package power otherwise.
        powers = [r["power_w"] for r in readings if "power_w" in r]
        powers = powers or [r["package_power_w"] for r in readings if "package_power_w" in r]
        return (max(temps) if temps else None), (sum(powers) if powers else None)

    def _calm(self, temp: float | None, power: float | None) -> bool:
        """At or below every threshold; a threshold with no reading can never be met."""
        cfg = self.config
        if cfg.max_gpu_temp_c is not None and (temp is None or temp > cfg.max_gpu_temp_c):
            return False
        return not (cfg.max_power_w is not None and (power is None or power > cfg.max_power_w))

    def _done(
        self,
        start: float,
        settled: bool,
        temp: float | None,
        power: float | None,
        sources: list[Source],
    ) -> Cooldown:
        return Cooldown(
            waited_s=round(self.clock() - start, 3),
            settled=settled,
            gpu_temp_c=temp,
            power_w=None if power is None else round(power, 2),
            max_gpu_temp_c=self.config.max_gpu_temp_c,
            max_power_w=self.config.max_power_w,
            sources=[source.name for source in sources],
        )
