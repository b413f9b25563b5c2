"""Every registered source, on the fixture box and on an empty root: never raises, units named."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from jobs.telemetry import SourceStatus
from worker.telemetry import default_sources, get_source, platform_sources, registered_sources
from worker.telemetry.base import METRIC_UNITS


def test_registry_order_is_precedence() -> None:
    assert registered_sources() == [
        "nvml", "powermetrics", "windows_gpu", "amdgpu", "ioreg_gpu", "drm_fdinfo", "rapl",
        "psutil",
    ]  # fmt: skip
    assert [s.name for s in default_sources()] == platform_sources()


def test_each_platform_starts_its_own_sources() -> None:
    """What a Linux, Windows or macOS box would load (worker.platform dispatch)."""
    assert platform_sources("linux") == ["nvml", "amdgpu", "drm_fdinfo", "rapl", "psutil"]
    assert platform_sources("win32") == ["nvml", "windows_gpu", "psutil"]
    assert platform_sources("darwin") == ["nvml", "powermetrics", "ioreg_gpu", "psutil"]
    assert [s.name for s in default_sources(sys_platform="win32")] == platform_sources("win32")
    with pytest.raises(KeyError, match="no telemetry source named 'ipmi'"):
        get_source("ipmi")


@pytest.mark.parametrize("name", registered_sources())
def test_probe_never_raises_on_an_empty_root(name: str, tmp_path: Path) -> None:
    source = get_source(name, tmp_path)
    status = source.probe()
    source.close()
    assert isinstance(status, SourceStatus)
    assert status.name == name
    if not status.available:
        assert status.detail, "an absent source says why"


@pytest.mark.parametrize("name", registered_sources())
def test_every_source_samples_unit_named_metrics(name: str, strix: Any) -> None:
    source = get_source(name, strix.root)
    status = source.probe()
    try:
        if not status.available:
            # Only sources that read this box itself rather than the fixture tree (NVML) and
            # those of another platform (tested against recorded output elsewhere) are absent.
            assert name == "nvml" or name not in platform_sources()
            pytest.skip(f"{name} absent on this box: {status.detail}")
        source.watch(4242)  # llama-server in the fixture tree
        readings = [source.sample(10.0), source.sample(10.5)]
    finally:
        source.close()
    assert any(readings), f"{name} gave no reading in two samples"
    for reading in readings:
        for metric, value in reading.items():
            assert metric.endswith(METRIC_UNITS), f"{metric}: no unit suffix"
            assert isinstance(value, float) and math.isfinite(value), (metric, value)
            assert value >= 0, (metric, value)
