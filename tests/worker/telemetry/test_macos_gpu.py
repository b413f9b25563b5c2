"""macOS telemetry against recorded ioreg / powermetrics plists (tests/fixtures/macos/README.md).
Nothing here ran on a Mac; the powermetrics source's streaming reader runs for real against a
stand-in program that writes the recorded samples the way powermetrics does."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from worker.telemetry.macos_gpu import (
    IoregGpu,
    PlistError,
    Powermetrics,
    parse_ioreg,
    parse_powermetrics_sample,
    split_samples,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "macos"


def test_ioreg_performance_statistics() -> None:
    metrics, names = parse_ioreg((FIXTURES / "ioreg_ioaccelerator.plist").read_bytes())
    assert names == ["Apple M1 Max"]
    assert metrics == {
        "gpu_busy_pct": 88.0,
        "gpu_renderer_busy_pct": 87.0,
        "gpu_tiler_busy_pct": 41.0,
        "gtt_used_bytes": 19864223744.0,
    }


def test_powermetrics_stream_and_both_power_forms() -> None:
    buffer = bytearray((FIXTURES / "powermetrics_stream.plist").read_bytes())
    tail = bytes(buffer[-10:])
    del buffer[-10:]  # the last sample arrives in two reads
    first = split_samples(buffer)
    assert len(first) == 2
    buffer += tail
    assert len(split_samples(buffer)) == 1 and buffer == b""
    now = parse_powermetrics_sample(first[0])
    assert now == pytest.approx(
        {"cpu_power_w": 4.2105, "gpu_power_w": 28.45025, "ane_power_w": 0.0, "power_w": 32.66075}
    )
    old = parse_powermetrics_sample(
        split_samples(bytearray((FIXTURES / "powermetrics_energy_only.plist").read_bytes()))[0]
    )
    # 14225 mJ of GPU energy over 0.500123456 s
    assert old["gpu_power_w"] == pytest.approx(14.225 / 0.500123456)
    assert old["power_w"] == pytest.approx(old["cpu_power_w"] + old["gpu_power_w"])


@pytest.mark.parametrize("data", [b"", b"not a plist", b"<plist><dict>", b"\x00" * 10])
def test_malformed_plists(data: bytes) -> None:
    with pytest.raises(PlistError):
        parse_ioreg(data)
    with pytest.raises(PlistError):
        parse_powermetrics_sample(data)


def test_ioreg_source() -> None:
    data = (FIXTURES / "ioreg_ioaccelerator.plist").read_bytes()
    source = IoregGpu(run=lambda argv: data, sys_platform="darwin")
    status = source.probe()
    assert status.available and "Apple M1 Max" in (status.detail or "")
    assert source.sample(0.0)["gpu_busy_pct"] == 88.0
    assert source.sample(0.5) == {}  # read once a second: each read starts ioreg
    assert "macOS only" in (IoregGpu(sys_platform="linux").probe().detail or "")


STAND_IN = """#!{python}
import sys, time
# argv as the source passes it to powermetrics
assert sys.argv[1:5] == ["-f", "plist", "--samplers", "cpu_power,gpu_power,ane_power"], sys.argv
for sample in open({stream!r}, "rb").read().split(b"\\0")[:-1]:
    sys.stdout.buffer.write(sample + b"\\0")
    sys.stdout.flush()
    time.sleep(0.2)
time.sleep(600)
"""


def test_powermetrics_source_streams_from_a_child(tmp_path: Path) -> None:
    binary = tmp_path / "powermetrics"
    binary.write_text(
        STAND_IN.format(python=sys.executable, stream=str(FIXTURES / "powermetrics_stream.plist"))
    )
    binary.chmod(0o755)
    source = Powermetrics(sys_platform="darwin", binary=str(binary), is_root=lambda: True)
    status = source.probe()
    assert status.available and status.power_includes_cpu
    try:
        seen: list[dict[str, float]] = []
        deadline = time.monotonic() + 60
        while len(seen) < 2 and time.monotonic() < deadline:
            reading = source.sample(0.0)
            if reading:
                seen.append(reading)
            time.sleep(0.05)
        assert seen and all(set(r) == {"cpu_power_w", "gpu_power_w", "ane_power_w", "power_w"}
                            for r in seen)  # fmt: skip
        proc = source._proc
        assert proc is not None
    finally:
        source.close()
    assert proc.poll() is not None  # the child is gone with the source


def test_powermetrics_says_it_needs_root(tmp_path: Path) -> None:
    binary = tmp_path / "powermetrics"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    status = Powermetrics(sys_platform="darwin", binary=str(binary), is_root=lambda: False).probe()
    assert not status.available and "needs root" in (status.detail or "")
    missing = Powermetrics(sys_platform="darwin", binary=str(tmp_path / "nope")).probe()
    assert "not on PATH" in (missing.detail or "")
    assert "macOS only" in (Powermetrics(sys_platform="linux").probe().detail or "")
