"""amdgpu sysfs, DRM fdinfo and RAPL on the fixture trees, with counters moved by the test."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest

from worker.telemetry.amdgpu import AmdGpu
from worker.telemetry.counters import ProcessTree
from worker.telemetry.drm_fdinfo import DrmFdinfo, parse_fdinfo
from worker.telemetry.rapl import Rapl

FDINFO = Path(__file__).resolve().parents[2] / "fixtures" / "telemetry" / "fdinfo"
CARD = "sys/class/drm/card1/device/"
HWMON = CARD + "hwmon/hwmon5/"
ENERGY = "sys/class/powercap/intel-rapl:0/energy_uj"
KIB = 1024
MIB = 1024**2


# -- amdgpu --------------------------------------------------------------------------------


def test_amdgpu_reads_the_strix_halo_apu(strix: Any) -> None:
    source = AmdGpu(strix.root)
    status = source.probe()
    assert status.available
    assert status.power_includes_cpu is True
    assert status.detail is not None
    assert "card1 (APU, VRAM 0.5 GiB, GTT 62.2 GiB, power1_input)" == status.detail
    assert source.sample(1.0) == {
        "gpu_busy_pct": 87.0,
        "vram_used_bytes": 421527552.0,
        "gtt_used_bytes": 19474038784.0,
        "power_w": pytest.approx(68.042),
        "gpu_temp_c": 61.0,
    }
    strix.write(CARD + "gpu_busy_percent", 12)
    strix.write(HWMON + "power1_input", 25_500_000)
    strix.write(HWMON + "temp1_input", 48_500)
    later = source.sample(1.1)
    assert later["gpu_busy_pct"] == 12.0
    assert later["power_w"] == pytest.approx(25.5)
    assert later["gpu_temp_c"] == 48.5


def test_amdgpu_prefers_power1_average_and_skips_one_that_fails(strix: Any) -> None:
    strix.write(HWMON + "power1_average", 55_000_000)
    source = AmdGpu(strix.root)
    source.probe()
    assert source.sample(1.0)["power_w"] == pytest.approx(55.0)
    # Some APUs list power1_average but fail reading it (EINVAL); a folder fails the same way.
    failing = strix.path(HWMON + "power1_average")
    failing.unlink()
    failing.mkdir()
    source = AmdGpu(strix.root)
    assert "power1_input" in (source.probe().detail or "")
    assert source.sample(1.0)["power_w"] == pytest.approx(68.042)


def _gpu_metrics(strix: Any, format_revision: int | None) -> None:
    path = strix.path(CARD + "gpu_metrics")
    if format_revision is None:
        path.unlink()
    else:
        path.write_bytes(struct.pack("<HBB", 120, format_revision, 4) + bytes(116))


@pytest.mark.parametrize(
    ("format_revision", "vram_bytes", "includes_cpu"),
    [
        (1, 24 * 2**30, False),  # gpu_metrics_v1_x: a dGPU table
        (2, 512 * MIB, True),  # gpu_metrics_v2_x: an APU table
        (3, 96 * 2**30, True),  # a 96 GiB carve-out is still an APU
        (None, 512 * MIB, True),  # no gpu_metrics: a carve-out under 1 GiB means an APU
        (None, 16 * 2**30, None),  # no gpu_metrics, big VRAM: cannot tell
    ],
)
def test_amdgpu_tells_whether_power_includes_the_cpu(
    strix: Any, format_revision: int | None, vram_bytes: int, includes_cpu: bool | None
) -> None:
    _gpu_metrics(strix, format_revision)
    strix.write(CARD + "mem_info_vram_total", vram_bytes)
    assert AmdGpu(strix.root).probe().power_includes_cpu is includes_cpu


def test_amdgpu_apu_override_wins(strix: Any) -> None:
    assert AmdGpu(strix.root, apu=False).probe().power_includes_cpu is False


def test_amdgpu_absent_says_why(tmp_path: Path, strix: Any) -> None:
    status = AmdGpu(tmp_path).probe()
    assert not status.available
    assert "no card bound to amdgpu" in (status.detail or "")
    # Only the simpledrm boot framebuffer left: still no amdgpu card.
    for rel in ("sys/class/drm/card1", "sys/class/drm/card1-eDP-1"):
        for path in sorted(strix.path(rel).rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        strix.path(rel).rmdir()
    assert not AmdGpu(strix.root).probe().available


# -- DRM fdinfo ----------------------------------------------------------------------------


def test_parse_fdinfo_amdgpu_6_13_layout(strix: Any) -> None:
    client = parse_fdinfo(strix.path("proc/4242/fdinfo/5").read_text(), fallback_key=None)
    assert client is not None
    assert client.driver == "amdgpu"
    assert client.key == ("0000:c5:00.0", "1187")
    assert client.engines_ns == {"gfx": 91843000, "compute": 12057123456, "dma": 3300001000}
    # drm-resident-* wins over the legacy drm-memory-* alias; cpu is not GPU memory but parsed
    assert client.memory_bytes == {"cpu": 0, "gtt": 17658 * MIB, "vram": 510236 * KIB}


def test_parse_fdinfo_older_amdgpu_and_other_drivers() -> None:
    old = parse_fdinfo((FDINFO / "amdgpu-6.6.txt").read_text(), fallback_key=None)
    assert old is not None
    assert old.memory_bytes == {"vram": 8 * 2**30, "gtt": 2 * MIB, "cpu": 0}
    assert old.capacity == {"compute": 4}
    assert old.engines_ns == {"gfx": 1_500_000_000, "compute": 250_000_000, "dma": 0}
    panfrost = parse_fdinfo((FDINFO / "panfrost.txt").read_text(), fallback_key=None)
    assert panfrost is not None
    assert panfrost.engines_ns == {"fragment": 1846584880, "vertex-tiler": 71932239}
    assert panfrost.memory_bytes == {"memory": 36496 * KIB}
    assert parse_fdinfo((FDINFO / "socket.txt").read_text(), fallback_key=None) is None


def test_drm_fdinfo_busy_per_engine_from_counter_deltas(strix: Any) -> None:
    source = DrmFdinfo(strix.root)
    status = source.probe()
    assert status.available
    assert status.detail == "DRM clients of card0, card1, renderD128 in PID/fdinfo"
    source.watch(4242)
    first = source.sample(100.0)
    # Memory: clients 1187 (fds 5 and 6: counted once), 1188, and 1190 in child 4250.
    assert first == {
        "drm_vram_bytes": float((510236 + 4096 + 0) * KIB),
        "drm_gtt_bytes": float((17658 * MIB) + (8 * MIB) + (64 * MIB)),
    }
    for fd in (5, 6):  # one DRM file behind two fds reads the same
        strix.fdinfo_add(4242, fd, "engine-gfx", 250_000_000)
        strix.fdinfo_add(4242, fd, "engine-compute", 200_000_000)
    strix.fdinfo_add(4242, 7, "engine-compute", 50_000_000)
    strix.fdinfo_add(4250, 4, "engine-compute", 50_000_000)
    second = source.sample(100.5)
    assert second["engine_gfx_busy_pct"] == pytest.approx(50.0)  # 250 ms of 500 ms
    assert second["engine_compute_busy_pct"] == pytest.approx(60.0)  # 300 ms, three clients
    assert second["engine_dma_busy_pct"] == 0.0  # the copy engine idle is 0 %, not missing


def test_drm_fdinfo_keeps_the_larger_value_when_a_counter_goes_back(strix: Any) -> None:
    source = DrmFdinfo(strix.root)
    source.probe()
    source.watch(4242)
    source.sample(100.0)
    for fd in (5, 6):
        strix.fdinfo_add(4242, fd, "engine-gfx", -40_000_000)  # stale read, per the kernel doc
    assert source.sample(100.5)["engine_gfx_busy_pct"] == 0.0
    for fd in (5, 6):
        strix.fdinfo_add(4242, fd, "engine-gfx", 40_000_000 + 100_000_000)
    assert source.sample(101.0)["engine_gfx_busy_pct"] == pytest.approx(20.0)


def test_drm_fdinfo_divides_by_engine_capacity_and_counts_new_clients_late(strix: Any) -> None:
    source = DrmFdinfo(strix.root)
    source.probe()
    source.watch(4242)
    source.sample(100.0)
    # A new DRM client (four identical compute rings) opens fd 8; fds are re-listed each second.
    strix.path("proc/4242/fdinfo/8").write_text((FDINFO / "amdgpu-6.6.txt").read_text())
    os.symlink("/dev/dri/renderD128", strix.path("proc/4242/fd/8"))
    source.sample(101.0)  # first read of the new client: its history is not this interval's
    strix.fdinfo_add(4242, 8, "engine-compute", 1_000_000_000)
    out = source.sample(101.5)
    # 1 s busy over 0.5 s of four rings = 50 %
    assert out["engine_compute_busy_pct"] == pytest.approx(50.0)
    assert out["drm_vram_bytes"] == float((510236 + 4096) * KIB + 8 * 2**30)


def test_drm_fdinfo_follows_children_and_their_exit(strix: Any) -> None:
    source = DrmFdinfo(strix.root)
    source.probe()
    source.watch(4242)
    gtt_with_child = source.sample(100.0)["drm_gtt_bytes"]
    strix.path("proc/4242/task/4242/children").write_text("")
    for path in sorted(strix.path("proc/4250").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    strix.path("proc/4250").rmdir()
    assert source.sample(101.0)["drm_gtt_bytes"] == gtt_with_child - 64 * MIB


def test_process_tree_without_children_files_reads_parents_from_stat(strix: Any) -> None:
    for path in strix.root.glob("proc/*/task/*/children"):
        path.unlink()
    # comm "gpu (helper)" holds a space and parentheses: the parent is after the last ")".
    assert ProcessTree(strix.path("proc")).pids(0.0) == []
    tree = ProcessTree(strix.path("proc"))
    tree.watch(4242)
    assert tree.pids(0.0) == [4242, 4250]


def test_drm_fdinfo_absent_or_unwatched_gives_nothing(tmp_path: Path, strix: Any) -> None:
    status = DrmFdinfo(tmp_path).probe()
    assert not status.available
    assert "proc" in (status.detail or "")
    (tmp_path / "proc").mkdir()
    status = DrmFdinfo(tmp_path).probe()
    assert not status.available
    assert "no DRM device under" in (status.detail or "")
    source = DrmFdinfo(strix.root)
    assert source.probe().available
    assert source.sample(1.0) == {}  # nothing watched yet
    source.watch(999999)  # no such process
    assert source.sample(2.0) == {}


# -- RAPL ----------------------------------------------------------------------------------


def test_rapl_power_from_energy_deltas(strix: Any) -> None:
    source = Rapl(strix.root)
    status = source.probe()
    assert status.available
    assert status.detail == "intel-rapl:0 (package-0)"  # the core sub-zone is not added
    assert status.power_includes_cpu is True
    assert source.sample(10.0) == {}  # a rate needs two reads
    strix.add(ENERGY, 4_500_000)
    assert source.sample(10.1) == {"package_power_w": pytest.approx(45.0)}
    strix.add(ENERGY, 2_000_000)
    assert source.sample(10.6) == {"package_power_w": pytest.approx(4.0)}


def test_rapl_counter_wraps_at_max_energy_range(strix: Any) -> None:
    wrap = strix.read_int("sys/class/powercap/intel-rapl:0/max_energy_range_uj")
    strix.write(ENERGY, wrap - 1_000_000)
    source = Rapl(strix.root)
    source.probe()
    source.sample(10.0)
    strix.write(ENERGY, 2_000_000)  # 1 J to the wrap, then 2 J after it
    assert source.sample(10.1) == {"package_power_w": pytest.approx(30.0)}


def test_rapl_absent_or_unreadable_says_why(tmp_path: Path, strix: Any) -> None:
    status = Rapl(tmp_path).probe()
    assert not status.available
    assert "no RAPL package zone" in (status.detail or "")
    energy = strix.path(ENERGY)
    energy.unlink()
    energy.mkdir()  # a read error, like the EACCES an unprivileged worker gets
    status = Rapl(strix.root).probe()
    assert not status.available
    assert "energy_uj" in (status.detail or "")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_rapl_root_only_counter_says_so(strix: Any) -> None:
    strix.path(ENERGY).chmod(0o400)
    strix.path(ENERGY).chmod(0o000)
    status = Rapl(strix.root).probe()
    assert not status.available
    assert "not readable by this user" in (status.detail or "")
