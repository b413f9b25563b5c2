"""The cool-down gate on a copy of a real amdgpu tree (RX 7900 XTX: temp1_input 38 °C,
power1_average 13 W), with a fake clock: the test's `sleep` is where the GPU cools down."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from worker.config import CooldownConfig
from worker.cooldown import CooldownGate

FACTS = Path(__file__).resolve().parent.parent / "fixtures" / "facts"
HWMON = "sys/class/drm/card0/device/hwmon/hwmon2"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dgpu(tmp_path: Path) -> Path:
    root = tmp_path / "dgpu"
    shutil.copytree(FACTS / "radeon-dgpu" / "root" / "sys", root / "sys", symlinks=True)
    return root


def _cooling(root: Path, clock: FakeClock, temps_c: list[float]) -> CooldownGate:
    """A gate whose every poll sleep advances the clock and sets the next temperature."""
    (root / HWMON / "temp1_input").write_text(f"{int(temps_c[0] * 1000)}\n")
    remaining = list(temps_c[1:])

    def sleep(seconds: float) -> None:
        clock.now += seconds
        if remaining:
            (root / HWMON / "temp1_input").write_text(f"{int(remaining.pop(0) * 1000)}\n")

    config = CooldownConfig(max_gpu_temp_c=50, max_power_w=20, settle_s=2, timeout_s=60)
    # amdgpu only: a box running these tests may have an NVIDIA GPU that NVML would also read
    return CooldownGate(config, root=root, clock=clock, sleep=sleep, source_names=("amdgpu",))


def test_waits_until_cool_for_the_settle_time(dgpu: Path) -> None:
    clock = FakeClock()
    with _cooling(dgpu, clock, [80, 70, 60, 50, 45, 44, 43]) as gate:
        pass
    record = gate.record
    assert record is not None and record.settled
    # calm from t=3 (50 °C); the gate opens once it has stayed calm for 2 s: t=5
    assert record.waited_s == 5.0
    assert record.gpu_temp_c == 44.0 and record.power_w == 13.0
    assert record.max_gpu_temp_c == 50 and "amdgpu" in record.sources


def test_a_hot_spike_restarts_the_settle_time(dgpu: Path) -> None:
    clock = FakeClock()
    gate = _cooling(dgpu, clock, [45, 45, 55, 45, 45, 45])
    record = gate.wait()
    assert record.settled and record.waited_s == 5.0  # calm again from t=3, open at t=5


def test_gives_up_at_the_timeout_and_says_so(dgpu: Path) -> None:
    clock = FakeClock()
    record = _cooling(dgpu, clock, [90] * 100).wait()
    assert not record.settled
    assert record.waited_s == 60.0 and record.gpu_temp_c == 90.0


def test_a_threshold_nothing_can_read_never_opens_the_gate(tmp_path: Path) -> None:
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.now += seconds

    config = CooldownConfig(max_gpu_temp_c=50, settle_s=0, timeout_s=3)
    gate = CooldownGate(config, root=tmp_path, clock=clock, sleep=sleep, source_names=("amdgpu",))
    record = gate.wait()
    assert not record.settled and record.gpu_temp_c is None and record.sources == []


def test_config_needs_a_threshold() -> None:
    with pytest.raises(ValueError, match="give max_gpu_temp_c, max_power_w or both"):
        CooldownConfig()
