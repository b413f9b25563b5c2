"""Every registered source, on the fixture box and on an empty root: never raises, units named."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from jobs.telemetry import SourceStatus
from worker.telemetry import default_sources, get_source, registered_sources
from worker.telemetry.base import METRIC_UNITS


def test_registry_order_is_precedence() -> None:
    assert registered_sources() == ["nvml", "amdgpu", "drm_fdinfo", "rapl", "psutil"]
    assert [s.name for s in default_sources()] == registered_sources()
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
            # Only sources that read this box itself rather than the fixture tree (NVML) can be
            # absent here.
            assert name == "nvml"
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
