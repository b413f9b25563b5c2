"""NVIDIA GPUs through NVML (the nvidia-ml-py package): busy %, memory, power, temperature.

nvidia-ml-py is imported only when this source is probed, so a box without it (or without the
NVIDIA driver's libnvidia-ml) gets an unavailable status with the reason, never an ImportError.

Power is `nvmlDeviceGetPowerUsage` (mW), not the total-energy counter: that counter would
integrate exactly, but one read cost 4.4 ms of CPU on an H100 (driver 580, calls timed at
10 Hz), against 8 µs for the power reading and ~160 µs for all four readings used here; at
10 Hz it alone would use 4% of a core. Several GPUs are summed (memory, power),
averaged (busy %), and the hottest is reported.

Memory and temperature are read once a second (`slow_every_s`), busy % and power every sample:
on the H100 VM the four reads cost ~250 µs of CPU per sample at 10 Hz, half of it the memory
query, which put the sampler over its 0.5%-of-a-core budget. VRAM moves in steps (model load,
KV cache and compute buffers are allocated once) and temperature over seconds; samples in
between carry no `vram_used_bytes` / `gpu_temp_c`.
"""

from __future__ import annotations

import importlib
from typing import Any

from jobs.telemetry import SourceStatus
from worker.telemetry.base import Every, Source, register_source


@register_source("nvml", precedence=10)
class Nvml(Source):
    """Whole-device readings of every NVIDIA GPU NVML sees."""

    slow_every_s = 1.0
    _nv: Any = None
    _handles: list[Any]
    _unsupported: set[tuple[int, str]]

    def probe(self) -> SourceStatus:
        try:
            nv = importlib.import_module("pynvml")
        except ImportError:
            return self.status(False, "nvidia-ml-py is not installed (pip install nvidia-ml-py)")
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            return self.status(False, f"NVML could not start (no NVIDIA driver?): {exc}")
        try:
            count = nv.nvmlDeviceGetCount()
            handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            names = [_text(nv.nvmlDeviceGetName(h)) for h in handles]
            driver = _text(nv.nvmlSystemGetDriverVersion())
        except nv.NVMLError as exc:
            nv.nvmlShutdown()
            return self.status(False, f"NVML started but cannot list GPUs: {exc}")
        if not handles:
            nv.nvmlShutdown()
            return self.status(False, "NVML sees no NVIDIA GPU")
        self._nv, self._handles = nv, handles
        self._unsupported = set()
        self.slow = Every(self.slow_every_s)
        return self.status(True, f"{', '.join(names)} (driver {driver})", power_includes_cpu=False)

    def close(self) -> None:
        if self._nv is not None:
            try:
                self._nv.nvmlShutdown()
            except self._nv.NVMLError:
                pass
            self._nv = None

    def sample(self, now: float) -> dict[str, float]:
        if self._nv is None:
            return {}
        nv = self._nv
        busy: list[float] = []
        temps: list[float] = []
        out: dict[str, float] = {}
        slow = self.slow.due(now)
        for index, handle in enumerate(self._handles):
            util = self._read(index, "util", nv.nvmlDeviceGetUtilizationRates, handle)
            if util is not None:
                busy.append(float(util.gpu))
            if slow:
                self._read_slow(index, handle, out, temps)
            milli_w = self._read(index, "power", nv.nvmlDeviceGetPowerUsage, handle)
            if milli_w is not None:
                out["power_w"] = out.get("power_w", 0.0) + float(milli_w) / 1000
        if busy:
            out["gpu_busy_pct"] = sum(busy) / len(busy)
        if temps:
            out["gpu_temp_c"] = max(temps)
        return out

    def _read_slow(
        self, index: int, handle: Any, out: dict[str, float], temps: list[float]
    ) -> None:
        nv = self._nv
        memory = self._read(index, "memory", nv.nvmlDeviceGetMemoryInfo, handle)
        if memory is not None:
            out["vram_used_bytes"] = out.get("vram_used_bytes", 0.0) + memory.used
        temp = self._read(
            index, "temp", nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU
        )
        if temp is not None:
            temps.append(float(temp))

    def _read(self, index: int, what: str, call: Any, *args: Any) -> Any:
        """One NVML query; a field the GPU does not support is not asked for again."""
        if (index, what) in self._unsupported:
            return None
        try:
            return call(*args)
        except self._nv.NVMLError_NotSupported:
            self._unsupported.add((index, what))
        except self._nv.NVMLError:
            pass
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_processes() -> list[tuple[int, int | None]] | None:
    """(pid, GPU memory bytes or None) of every compute process on an NVIDIA GPU, as NVML
    lists them; None where NVML cannot be read (no package, no driver).

    For the disturbance check (worker/disturbance.py): one NVML start per call, so it is read
    once per job, after the run.
    """
    try:
        nv = importlib.import_module("pynvml")
        nv.nvmlInit()
    except Exception:  # ImportError, NVMLError: no NVIDIA GPU here
        return None
    found: dict[int, int | None] = {}
    try:
        for index in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            # Compute processes only: a desktop's Xorg and compositor are always in the
            # graphics list and would make every run on a workstation look disturbed.
            for call in (nv.nvmlDeviceGetComputeRunningProcesses,):
                try:
                    processes = call(handle)
                except nv.NVMLError:
                    continue
                for p in processes:
                    used = getattr(p, "usedGpuMemory", None)
                    # NVML reports "not available" (a container, WDDM) as None or a huge value.
                    used = used if isinstance(used, int) and 0 <= used < 2**50 else None
                    pid, known = int(p.pid), found.get(int(p.pid))
                    found[pid] = used if known is None else known + (used or 0)
    except nv.NVMLError:
        return None
    finally:
        try:
            nv.nvmlShutdown()
        except nv.NVMLError:
            pass
    return sorted(found.items())
