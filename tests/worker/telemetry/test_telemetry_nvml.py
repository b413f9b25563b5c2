"""NVML: the real library where this box has the driver, a stand-in module for unit arithmetic.

No NVIDIA GPU on the development machines: the stand-in implements the few pynvml calls the
source makes, with pynvml's own names and units (mW, bytes, °C), so the conversions are
checked here; the real library is exercised wherever the driver exists.
"""

from __future__ import annotations

import sys
import time
import types
from dataclasses import dataclass
from typing import Any

import pytest

from worker.telemetry.nvml import Nvml


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801  (pynvml's name)
    pass


@dataclass
class _Util:
    gpu: int
    memory: int


@dataclass
class _Memory:
    total: int
    used: int
    free: int


def fake_pynvml(gpus: list[dict[str, Any]], fail_init: bool = False) -> types.ModuleType:
    """A pynvml stand-in: each GPU is a dict of name, util %, used bytes, °C and mW."""
    nv = types.ModuleType("pynvml")
    calls = {"shutdown": 0}

    def init() -> None:
        if fail_init:
            raise NVMLError("NVML Shared Library Not Found")

    def shutdown() -> None:
        calls["shutdown"] += 1

    nv.__dict__.update(
        NVMLError=NVMLError,
        NVMLError_NotSupported=NVMLError_NotSupported,
        NVML_TEMPERATURE_GPU=0,
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=shutdown,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: gpus[h]["name"],
        nvmlSystemGetDriverVersion=lambda: "550.54.15",
        nvmlDeviceGetUtilizationRates=lambda h: _Util(gpus[h]["util"], 0),
        nvmlDeviceGetMemoryInfo=lambda h: _Memory(80 * 2**30, gpus[h]["used"], 0),
        nvmlDeviceGetTemperature=lambda h, sensor: gpus[h]["temp"],
        nvmlDeviceGetPowerUsage=lambda h: gpus[h]["power_mw"],
    )
    return nv


def test_nvml_converts_units_and_aggregates_gpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpus = [
        {"name": "NVIDIA H100", "util": 90, "used": 40 * 2**30, "temp": 61, "power_mw": 350_000},
        {"name": b"Tesla T4", "util": 30, "used": 2 * 2**30, "temp": 70, "power_mw": 41_500},
    ]  # fmt: skip
    nv = fake_pynvml(gpus)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    source = Nvml()
    status = source.probe()
    assert status.available
    assert status.detail == "NVIDIA H100, Tesla T4 (driver 550.54.15)"
    assert status.power_includes_cpu is False
    first = source.sample(5.0)
    assert first == {
        "gpu_busy_pct": 60.0,  # mean of the GPUs
        "vram_used_bytes": float(42 * 2**30),  # summed
        "gpu_temp_c": 70.0,  # the hottest
        "power_w": pytest.approx(350.0 + 41.5),  # mW, summed
    }
    gpus[0]["power_mw"] = 300_000
    gpus[1]["util"] = 10
    gpus[0]["used"] = 60 * 2**30
    second = source.sample(5.2)
    # Busy % and power every sample; memory and temperature once a second.
    assert second == {"gpu_busy_pct": 50.0, "power_w": pytest.approx(300.0 + 41.5)}
    assert source.sample(6.0)["vram_used_bytes"] == float(62 * 2**30)
    source.close()
    assert nv.calls["shutdown"] == 1


def test_nvml_field_a_gpu_lacks_is_not_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [{"name": "Tesla T4", "util": 30, "used": 2**30, "temp": 70, "power_mw": 41_500}]
    nv = fake_pynvml(gpus)
    asked = []

    def no_power(handle: int) -> int:
        asked.append(handle)
        raise NVMLError_NotSupported("Not Supported")

    nv.nvmlDeviceGetPowerUsage = no_power
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    source = Nvml()
    source.probe()
    assert "power_w" not in source.sample(1.0)
    assert "power_w" not in source.sample(1.1)
    assert asked == [0]
    assert source.sample(2.0)["gpu_temp_c"] == 70.0


def test_nvml_without_the_package_or_driver_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if not installed
    status = Nvml().probe()
    assert not status.available
    assert "nvidia-ml-py is not installed" in (status.detail or "")
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], fail_init=True))
    status = Nvml().probe()
    assert not status.available
    assert "NVML Shared Library Not Found" in (status.detail or "")
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([]))
    assert Nvml().probe().detail == "NVML sees no NVIDIA GPU"


def test_nvml_real_library_on_this_box() -> None:
    pytest.importorskip("pynvml", reason="nvidia-ml-py not installed")
    source = Nvml()
    status = source.probe()
    try:
        if not status.available:
            assert status.detail  # e.g. "NVML could not start (no NVIDIA driver?): ..."
            pytest.skip(f"no NVIDIA GPU here: {status.detail}")
        out = source.sample(time.monotonic())  # the first sample reads every field
        assert 0 <= out["gpu_busy_pct"] <= 100
        assert out["vram_used_bytes"] > 0
        assert out["power_w"] > 0
        assert 0 < out["gpu_temp_c"] < 120
    finally:
        source.close()
