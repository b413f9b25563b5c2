"""Windows PDH GPU telemetry against recorded typeperf / Get-Counter output (see
tests/fixtures/windows/README.md for where the formats come from). Nothing here ran on Windows:
the parser, Task Manager's arithmetic and the source's logic run on Linux; only PdhReader's
win32pdh calls are Windows-only, and here they report what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.telemetry.base import METRIC_UNITS
from worker.telemetry.pdh_gpu import (
    CounterValue,
    PdhFormatError,
    engine_type,
    gpu_metrics,
    parse_get_counter_json,
    parse_typeperf_csv,
    split_counter_path,
)
from worker.telemetry.windows_gpu import PdhReader, ReaderUnavailable, WindowsGpu

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "windows"
LLAMA, HELPER, DWM = 9876, 9912, 1234


def _typeperf() -> list[list[CounterValue]]:
    return parse_typeperf_csv((FIXTURES / "typeperf_gpu.csv").read_text())


def test_counter_paths_split_with_or_without_the_host() -> None:
    instance = "pid_1_luid_0x0_0x1_phys_0_eng_0_engtype_3D"
    path = rf"\\HOST\GPU Engine({instance})\Utilization Percentage"
    assert split_counter_path(path) == ("gpu engine", instance, "utilization percentage")
    assert split_counter_path(r"\GPU Adapter Memory(luid_0x0_0x1_phys_0)\Shared Usage") == (
        "gpu adapter memory", "luid_0x0_0x1_phys_0", "shared usage"
    )  # fmt: skip
    assert split_counter_path("not a counter") is None
    assert [engine_type(t) for t in ("3D", "Compute_1", "VideoDecode", "")] == [
        "3d", "compute", "videodecode", None
    ]  # fmt: skip


def test_typeperf_samples_skip_blanks_and_console_lines() -> None:
    samples = _typeperf()
    assert len(samples) == 3  # "Exiting, please wait..." is not a sample
    helper = [v for v in samples[0] if f"pid_{HELPER}_" in v.instance and v.object == "gpu engine"]
    assert helper == []  # printed " ": the instance had no value yet
    assert any(f"pid_{HELPER}_" in v.instance for v in samples[1])


def test_task_manager_arithmetic_on_a_recorded_sample() -> None:
    out = gpu_metrics(_typeperf()[1], pids=[LLAMA, HELPER])
    # eng_3 (Copy): llama-server 93.5 + its helper 4.0; eng_0 (3D): 70.25 + dwm 2.0
    assert out["gpu_copy_busy_pct"] == pytest.approx(97.5)
    assert out["gpu_3d_busy_pct"] == pytest.approx(72.25)
    assert out["gpu_busy_pct"] == pytest.approx(97.5)  # the busiest engine, as Task Manager
    assert out["engine_dma_busy_pct"] == pytest.approx(97.5)  # the copy engine, Linux's name
    assert out["engine_gfx_busy_pct"] == pytest.approx(70.25)  # without dwm's share
    assert out["gpu_compute_busy_pct"] == pytest.approx(2.5)  # Compute_0/_1: the busier
    assert out["vram_used_bytes"] == 501219328  # the iGPU only: the engine uses no other
    assert out["gtt_used_bytes"] == 19394461696
    assert out["drm_vram_bytes"] == 406847488
    assert out["drm_gtt_bytes"] == 19126026240 + 1048576
    assert all(name.endswith(METRIC_UNITS) for name in out)


def test_without_pids_every_adapter_counts_and_no_process_figures() -> None:
    out = gpu_metrics(_typeperf()[1])
    assert not any(name.startswith(("engine_", "drm_")) for name in out)
    assert out["vram_used_bytes"] == 501219328 + 0  # the Basic Render Driver adds 0
    assert out["gpu_busy_pct"] == pytest.approx(97.5)


def test_get_counter_json_agrees_with_typeperf() -> None:
    text = (FIXTURES / "get_counter_gpu.json").read_text(encoding="utf-8")
    from_json = gpu_metrics(parse_get_counter_json(text), pids=[LLAMA, HELPER])
    assert from_json == pytest.approx(gpu_metrics(_typeperf()[1], pids=[LLAMA, HELPER]))


def test_an_engine_is_capped_at_100_percent() -> None:
    values = [
        CounterValue("gpu engine", f"pid_{pid}_luid_0x0_0x1_phys_0_eng_0_engtype_3D",
                     "utilization percentage", 60.0)
        for pid in (1, 2)
    ]  # fmt: skip
    assert gpu_metrics(values, pids=[1, 2])["gpu_busy_pct"] == 100.0


@pytest.mark.parametrize(
    "text",
    ["", "garbage\n1,2,3", '"(PDH-CSV 4.0)"\n"x","y","z"'],
    ids=["empty", "no header", "ragged rows"],
)
def test_malformed_typeperf_output(text: str) -> None:
    if "PDH-CSV" in text:
        assert parse_typeperf_csv(text) == []  # rows of the wrong width are skipped
    else:
        with pytest.raises(PdhFormatError, match="PDH-CSV"):
            parse_typeperf_csv(text)


@pytest.mark.parametrize("text", ["{", "[1, 2]", '{"CookedValue": 3}', "x" * 10])
def test_malformed_get_counter_output(text: str) -> None:
    with pytest.raises(PdhFormatError):
        parse_get_counter_json(text)


def test_hostile_values_are_dropped() -> None:
    text = (
        '"(PDH-CSV 4.0)",'
        '"\\\\H\\GPU Engine(pid_1_luid_0x0_0x1_phys_0_eng_0_engtype_3D)\\Utilization Percentage",'
        '"\\\\H\\GPU Adapter Memory(luid_0x0_0x1_phys_0)\\Dedicated Usage"\n'
        '"t","nan","-5"\n"t","1e400","12"\n'
    )
    samples = parse_typeperf_csv(text)
    assert samples[0] == [] and [v.value for v in samples[1]] == [12.0]


class Replay:
    """A CounterReader that hands out recorded samples, as PdhReader would read them live."""

    def __init__(self, samples: list[list[CounterValue]]) -> None:
        self.samples, self.opened, self.closed = list(samples), False, False

    def open(self) -> None:
        self.opened = True

    def read(self) -> list[CounterValue]:
        return self.samples.pop(0) if self.samples else []

    def close(self) -> None:
        self.closed = True


def test_the_source_follows_the_engine_and_its_children() -> None:
    reader = Replay(_typeperf())
    source = WindowsGpu(reader=reader, sys_platform="win32", children=lambda pid: [HELPER])
    status = source.probe()  # reads the first sample (the first half of a rate)
    assert status.available and "luid_0x00000000_0x0001a2b3_phys_0" in (status.detail or "")
    source.watch(LLAMA)
    out = source.sample(1.0)
    assert out["engine_dma_busy_pct"] == pytest.approx(97.5)
    source.close()
    assert reader.closed


def test_the_source_says_why_it_is_absent() -> None:
    assert "Windows only" in (WindowsGpu(sys_platform="linux").probe().detail or "")

    class Missing(Replay):
        def open(self) -> None:
            raise ReaderUnavailable("PDH GPU counters: not available (they need WDDM 2.0+, ...)")

    status = WindowsGpu(reader=Missing([]), sys_platform="win32").probe()
    assert not status.available and "WDDM 2.0" in (status.detail or "")


def test_pdh_reader_without_pywin32_says_how_to_install_it() -> None:
    import importlib.util

    if importlib.util.find_spec("win32pdh") is not None:
        pytest.skip("pywin32 is installed here")
    with pytest.raises(ReaderUnavailable, match=r"orch\[windows\]"):
        PdhReader().open()
