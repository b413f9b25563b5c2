"""The disturbance monitor on a fixture /proc and /sys (tests/fixtures/disturbance/README.md).

Each test copies the tree, takes the start counters, rewrites the counters as a run would
move them, and checks what the record says. Ticks are USER_HZ (100 a second on Linux).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from worker.config import DisturbanceConfig, load_worker_config
from worker.disturbance import (
    DisturbanceMonitor,
    parse_cpu_busy,
    parse_pid_stat,
)
from worker.errors import ConfigError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "disturbance" / "box"
TICKS = 100
WORKER, ENGINE, STRESS, BROWSER = 4100, 4200, 4300, 4400


class Box:
    """A writable copy of the fixture tree, with helpers that move its counters."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def proc_stat(self, pid: int) -> Path:
        return self.root / "proc" / str(pid) / "stat"

    def add_cpu(self, pid: int, ticks: int) -> None:
        """utime (field 14) += ticks, keeping the line's layout."""
        path = self.proc_stat(pid)
        text = path.read_text()
        head, _, rest = text.rpartition(") ")
        fields = rest.split(" ")
        fields[11] = str(int(fields[11]) + ticks)  # field 14 counted from the state (3)
        path.write_text(f"{head}) {' '.join(fields)}")

    def busy(self, ticks: int) -> None:
        """The box's user time += ticks (the `cpu` line; per-CPU lines are not read)."""
        path = self.root / "proc" / "stat"
        lines = path.read_text().splitlines(keepends=True)
        columns = lines[0].split()
        columns[1] = str(int(columns[1]) + ticks)
        lines[0] = f"cpu  {' '.join(columns[1:])}\n"
        path.write_text("".join(lines))

    def remove(self, pid: int) -> None:
        shutil.rmtree(self.root / "proc" / str(pid))

    def restore(self, pid: int) -> None:
        shutil.copytree(FIXTURE / "proc" / str(pid), self.root / "proc" / str(pid))

    def write(self, rel: str, value: object) -> None:
        (self.root / rel).write_text(f"{value}\n")


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def box(tmp_path: Path) -> Box:
    root = tmp_path / "box"
    shutil.copytree(FIXTURE, root)
    return Box(root)


def monitor(
    box: Box,
    clock: Clock,
    config: DisturbanceConfig | None = None,
    reaped: list[float] | None = None,
    gpu: list[tuple[int, int | None]] | None = None,
) -> DisturbanceMonitor:
    reaped = reaped if reaped is not None else [0.0]
    return DisturbanceMonitor(
        config or DisturbanceConfig(),
        root=box.root,
        own_pid=WORKER,
        clock=clock,
        reaped_cpu_s=lambda: reaped[0],
        gpu=lambda: gpu,
    )


def test_parsers_read_the_kernels_formats() -> None:
    stat = parse_pid_stat((FIXTURE / "proc" / str(BROWSER) / "stat").read_text())
    assert stat is not None and stat.comm == "Web Content" and stat.ppid == 1
    assert (stat.cpu_ticks, stat.start_ticks) == (340, 52000)
    # A comm with parentheses is cut at the last ")".
    odd = parse_pid_stat((FIXTURE / "proc" / "4500" / "stat").read_text())
    assert odd is not None and odd.comm == "(sd-pam)"
    assert parse_pid_stat("12 (cut short) S 1") is None
    assert parse_pid_stat("") is None
    # user + nice + system + irq + softirq of the `cpu` line; steal and idle are not busy.
    assert parse_cpu_busy((FIXTURE / "proc" / "stat").read_text()) == (
        1010000 + 2000 + 305000 + 0 + 5000,
        4,
    )
    assert parse_cpu_busy("intr 1 2 3\n") is None
    assert parse_cpu_busy("cpu  a b c\n") is None


def test_other_cpu_is_box_busy_time_minus_our_tree_and_names_the_culprit(box: Box) -> None:
    clock = Clock()
    box.remove(ENGINE)  # the engine starts during the run
    with monitor(box, clock) as mon:
        box.restore(ENGINE)  # llama-bench starts, at 0 ticks
        mon.watch(ENGINE)
        box.add_cpu(ENGINE, 190)
        box.add_cpu(WORKER, 10)
        box.add_cpu(STRESS, 150)
        # 40 ticks of a process that started and ended during the run: only /proc/stat has it.
        box.busy(190 + 10 + 150 + 40)
        clock.now += 1.0
    record = mon.record
    assert record is not None
    assert record.logical_cpus == 4 and record.duration_s == 1.0
    assert record.other_cpu_s == pytest.approx((150 + 40) / TICKS)
    assert record.other_cpu_fraction == pytest.approx(1.9 / 4.0)
    assert record.top_others == ["stress-ng (pid 4300): 1.5 s"]
    assert record.disturbed
    assert record.reasons == [
        "other processes used 48% of the CPUs (limit 10%) (stress-ng (pid 4300): 1.5 s)"
    ]
    assert record.thresholds == {"max_other_cpu_fraction": 0.1}
    assert {"/proc/stat", "/proc/PID/stat", "/proc/loadavg", "cpufreq"} <= set(record.sources)


def test_a_reaped_engine_counts_as_ours_through_rusage_children(box: Box) -> None:
    """llama-bench has exited and been waited for by the end: its CPU is in RUSAGE_CHILDREN,
    and what it had used before the start (a warm server that was stopped) comes off."""
    clock, reaped = Clock(), [3.0]
    box.add_cpu(ENGINE, 500)  # 5 s before the run
    with monitor(box, clock, reaped=reaped) as mon:
        mon.watch(ENGINE)
        box.remove(ENGINE)
        reaped[0] += 5.0 + 2.0  # its whole life: 5 s before, 2 s during the run
        box.busy(200)
        clock.now += 2.0
    record = mon.record
    assert record is not None
    assert record.other_cpu_s == 0.0 and record.other_cpu_fraction == 0.0
    assert record.top_others == [] and not record.disturbed and record.reasons == []


def test_a_reused_pid_is_a_new_process(box: Box) -> None:
    clock = Clock()
    with monitor(box, clock) as mon:
        # 4400 exits; a new process gets its pid (another start time), and uses 30 ticks.
        path = box.proc_stat(BROWSER)
        path.write_text(
            path.read_text().replace(" 300 40 ", " 25 5 ").replace(" 52000 ", " 60010 ")
        )
        box.busy(30)
        clock.now += 1.0
    record = mon.record
    assert record is not None
    assert record.top_others == ["Web Content (pid 4400): 0.3 s"]
    assert record.other_cpu_s == pytest.approx(0.3)


def test_clocks_load_and_throttle_counters(box: Box) -> None:
    clock = Clock()
    cpu = "sys/devices/system/cpu"
    with monitor(box, clock) as mon:
        box.write(f"{cpu}/cpu2/cpufreq/scaling_cur_freq", 1600000)
        box.write("proc/loadavg", "3.75 1.20 0.50 5/170 4700")
        mon.watch(ENGINE)  # gauges are read when the engine starts
        box.write(f"{cpu}/cpu2/cpufreq/scaling_cur_freq", 3000000)
        box.write("proc/loadavg", "2.10 1.30 0.52 1/170 4700")
        box.write(f"{cpu}/cpu0/thermal_throttle/core_throttle_count", 5)  # +2
        for n in range(4):  # one package event, shown by each of its CPUs
            box.write(f"{cpu}/cpu{n}/thermal_throttle/package_throttle_count", 8)
        clock.now += 1.0
    record = mon.record
    assert record is not None
    assert record.load_avg_1m_max == 3.75
    assert record.cpu_freq_mhz_min == 1600.0 and record.cpu_freq_mhz_max == 5100.0
    assert record.thermal_throttle_events == 3
    assert record.disturbed
    assert "the CPU throttled 3 time(s) (thermal)" in record.reasons
    assert "thermal_throttle" in record.sources


def test_thresholds_are_the_owners(box: Box) -> None:
    clock = Clock()
    config = DisturbanceConfig(
        max_other_cpu_fraction=None, max_load_avg=1.0, allow_throttling=True,
        allow_other_gpu_processes=False,
    )  # fmt: skip
    gpu = [(ENGINE, 2**30), (STRESS, None)]
    with monitor(box, clock, config, gpu=gpu) as mon:
        mon.watch(ENGINE)
        box.add_cpu(STRESS, 390)
        box.busy(390)
        box.write("sys/devices/system/cpu/cpu0/thermal_throttle/core_throttle_count", 9)
        box.write("proc/loadavg", "1.50 1.20 0.50 5/170 4700")
        clock.now += 1.0
    record = mon.record
    assert record is not None
    assert record.other_cpu_fraction == pytest.approx(3.9 / 4)  # measured, not judged
    assert record.thermal_throttle_events == 6  # measured, allowed
    assert record.gpu_other_processes == ["stress-ng (pid 4300)"]  # the engine's is ours
    assert record.thresholds == {"max_load_avg": 1.0}
    assert record.reasons == [
        "1-minute load average reached 1.50 (limit 1)",
        "other processes on the GPU: stress-ng (pid 4300)",
    ]


def test_an_unreadable_box_gives_missing_figures_not_a_failure(tmp_path: Path) -> None:
    clock = Clock()
    with DisturbanceMonitor(
        DisturbanceConfig(), root=tmp_path, own_pid=1, clock=clock, gpu=lambda: None
    ) as mon:
        clock.now += 1.0
    record = mon.record
    assert record is not None
    assert record.other_cpu_s is None and record.other_cpu_fraction is None
    assert record.load_avg_1m_max is None and record.cpu_freq_mhz_min is None
    assert record.thermal_throttle_events is None
    assert not record.disturbed and record.sources == []


def test_garbage_in_proc_is_no_reading(box: Box) -> None:
    clock = Clock()
    with monitor(box, clock) as mon:
        (box.root / "proc" / "stat").write_text("cpu  x\n" * 10_000)
        box.proc_stat(STRESS).write_text("\x00" * 5000)
        box.write("proc/loadavg", "not a number")
        clock.now += 1.0
    record = mon.record
    assert record is not None
    assert record.other_cpu_s is None and not record.disturbed


def test_the_real_box_gives_a_record_whose_parts_agree() -> None:
    """On this machine: thresholds so high nothing can pass them, so it is undisturbed."""
    config = DisturbanceConfig(max_other_cpu_fraction=1.0)
    with DisturbanceMonitor(config) as mon:
        sum(range(200_000))
    record = mon.record
    assert record is not None and not record.disturbed
    assert record.other_cpu_s is not None and record.other_cpu_s >= 0
    assert record.other_cpu_fraction is not None and 0 <= record.other_cpu_fraction <= 1
    assert record.logical_cpus >= 1 and record.load_avg_1m_max is not None


def _config_file(tmp_path: Path, disturbance: object) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump({"host": "box", "disturbance": disturbance}))
    return path


def test_worker_yaml_disturbance_section(tmp_path: Path) -> None:
    default = load_worker_config(_config_file(tmp_path, {}))
    assert default.disturbance.enabled and default.disturbance.max_other_cpu_fraction == 0.1
    assert default.disturbance.max_load_avg is None and not default.disturbance.allow_throttling
    off = load_worker_config(_config_file(tmp_path, {"enabled": False}))
    assert not off.disturbance.enabled
    with pytest.raises(ConfigError, match=r"worker.yaml: disturbance.max_other_cpu_fraction: "):
        load_worker_config(_config_file(tmp_path, {"max_other_cpu_fraction": 1.5}))
    with pytest.raises(ConfigError, match=r"disturbance.max_load: Extra inputs"):
        load_worker_config(_config_file(tmp_path, {"max_load": 3}))


def test_gpu_processes_reads_nvmls_running_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pynvml stand-in with pynvml's names (no NVIDIA GPU on the development machines):
    compute and graphics processes of every GPU, memory summed per pid; NVML's "not
    available" (None) stays unknown."""
    import types

    from worker.telemetry.nvml import gpu_processes

    class NVMLError(Exception):
        pass

    proc = types.SimpleNamespace
    lists = {
        ("compute", 0): [proc(pid=4200, usedGpuMemory=2**30), proc(pid=4300, usedGpuMemory=None)],
        ("graphics", 0): [proc(pid=900, usedGpuMemory=2**20)],
        ("compute", 1): [proc(pid=4200, usedGpuMemory=2**29)],
    }

    def running(kind: str):  # type: ignore[no-untyped-def]
        def call(index: int) -> list[object]:
            if kind == "graphics" and index == 1:
                raise NVMLError("Not Supported")
            return lists.get((kind, index), [])

        return call

    nv = types.ModuleType("pynvml")
    nv.__dict__.update(
        NVMLError=NVMLError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetComputeRunningProcesses=running("compute"),
        nvmlDeviceGetGraphicsRunningProcesses=running("graphics"),
    )
    monkeypatch.setitem(__import__("sys").modules, "pynvml", nv)
    # graphics clients (a desktop's Xorg, pid 900) are not counted: they are always there
    assert gpu_processes() == [(4200, 2**30 + 2**29), (4300, None)]

    def no_driver() -> None:
        raise NVMLError("Driver Not Loaded")

    nv.__dict__["nvmlInit"] = no_driver
    assert gpu_processes() is None
