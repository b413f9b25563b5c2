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
from worker.telemetry.base import Source, get_source, registered_sources
from worker.telemetry.summary import ENERGY_METRICS

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
        order = registered_sources()  # precedence order: the sampler merges readings so too
        for name in sorted(self.source_names, key=order.index):
            source = get_source(name, self.root)
            if source.probe().available:
                found.append(source)
            else:
                source.close()
        return found

    def _read(self, sources: list[Source], now: float) -> tuple[float | None, float | None]:
        values: dict[str, float] = {}
        for source in sources:
            try:
                readings = source.sample(now)
            except Exception as exc:  # a failing source is no reading, never a failed job
                log.warning("cool-down: telemetry source %s failed: %r", source.name, exc)
                continue
            for name, value in readings.items():
                values.setdefault(name, value)  # the first source (by precedence) keeps it
        power = next((values[m] for m in ENERGY_METRICS if m in values), None)
        return values.get("gpu_temp_c"), power

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
