"""The disturbance monitor on a fixture /proc and /sys (tests/fixtures/disturbance/README.md).

Each test copies the tree, takes the start counters, rewrites the counters as a run would
move them, and checks what the record says. Ticks are USER_HZ (100 a second on Linux).
"""

from __future__ import annotations

import re
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
from worker.disturbance_scan import BoxScan, FdBudget, StartScan, drm_clients
from worker.errors import ConfigError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "disturbance" / "box"
AMDGPU = FIXTURE.parent / "amdgpu"
TICKS = 100
WORKER, ENGINE, STRESS, BROWSER = 4100, 4200, 4300, 4400
COMPOSITOR, OTHER_SERVER = 4600, 4700


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

    def engine_busy(self, pid: int, fd: int, engine: str, add_ns: int) -> None:
        """drm-engine-<engine> of one fdinfo += add_ns; amdgpu prints an engine only once it
        has been used, so the line is added when absent."""
        path = self.root / "proc" / str(pid) / "fdinfo" / str(fd)
        text = path.read_text()
        line = re.search(rf"^drm-engine-{engine}:\t(\d+) ns$", text, re.M)
        if line is None:
            text += f"drm-engine-{engine}:\t{add_ns} ns\n"
        else:
            grown = f"drm-engine-{engine}:\t{int(line[1]) + add_ns} ns"
            text = text[: line.start()] + grown + text[line.end() :]
        path.write_text(text)


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
        background=False,  # the start scan done before the test rewrites the tree
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
    # 0.3 s of 4 CPUs over 1 s is 7.5%: over this limit, so the others are named.
    with monitor(box, clock, DisturbanceConfig(max_other_cpu_fraction=0.05)) as mon:
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
    with pytest.raises(ConfigError, match=r"worker.yaml:\d+: disturbance.max_other_cpu_fraction: "):
        load_worker_config(_config_file(tmp_path, {"max_other_cpu_fraction": 1.5}))
    with pytest.raises(ConfigError, match=r"disturbance.max_load: unknown key"):
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


def test_others_are_named_only_over_the_limit_and_still_measured_below(box: Box) -> None:
    """Naming culprits takes a scan of every process at the end: only a run whose others are
    over the owner's limit (10% where the owner judges no CPU share) pays for it."""
    clock = Clock()
    with monitor(box, clock) as mon:
        box.add_cpu(STRESS, 30)  # 0.3 s of 4 CPUs over 1 s: 7.5%, under the default 10%
        box.busy(30)
        clock.now += 1.0
    record = mon.record
    assert record is not None
    assert record.other_cpu_s == pytest.approx(0.3) and record.top_others == []
    assert not record.disturbed

    clock = Clock()
    unjudged = DisturbanceConfig(max_other_cpu_fraction=None)
    with monitor(box, clock, unjudged) as mon:
        box.add_cpu(STRESS, 60)  # 15%: not judged, named all the same
        box.busy(60)
        clock.now += 1.0
    record = mon.record
    assert record is not None
    assert record.top_others == ["stress-ng (pid 4300): 0.6 s"] and not record.disturbed


def test_an_engine_child_started_during_the_run_is_ours(box: Box) -> None:
    """The end reads only our tree and the processes new since the start: a child of the
    engine that appeared during the run is found by its parent and counted as ours."""
    clock = Clock()
    with monitor(box, clock) as mon:
        mon.watch(ENGINE)
        child = box.root / "proc" / "4210"
        child.mkdir()
        # llama-bench's helper: parent 4200, started during the run, 120 ticks
        child.joinpath("stat").write_text(
            box.proc_stat(ENGINE).read_text()
            .replace("4200 (llama-bench) R 4100 ", "4210 (helper) R 4200 ")
            .replace(" 0 0 0 0 20 0 4 0 60000 ", " 100 20 0 0 20 0 4 0 60100 ")
        )  # fmt: skip
        box.busy(120)
        clock.now += 1.0
    record = mon.record
    assert record is not None
    assert record.other_cpu_s == 0.0 and not record.disturbed


def test_the_start_scan_in_a_thread_reads_what_a_scan_at_once_reads(
    box: Box, tmp_path: Path
) -> None:
    shutil.copytree(AMDGPU, box.root, symlinks=True, dirs_exist_ok=True)
    proc = box.root / "proc"
    threaded = StartScan(proc, drm=True, background=True).result(10.0)
    at_once = BoxScan.take(proc, drm=True)
    assert threaded is not None and threaded == at_once
    assert set(at_once.procs) == {1, WORKER, ENGINE, STRESS, BROWSER, 4500, COMPOSITOR, 4700}
    assert set(at_once.drm) == {ENGINE, COMPOSITOR, OTHER_SERVER}
    # fds 5 and 6 of the other server are one client (one drm-client-id): read once
    assert at_once.drm[OTHER_SERVER] == {
        ("0000:c5:00.0", "1201"): {"compute": 51_000_000_000, "dma": 800_000_000, "gfx": 0}
    }


@pytest.fixture
def amdgpu_box(box: Box) -> Box:
    shutil.copytree(AMDGPU, box.root, symlinks=True, dirs_exist_ok=True)
    return box


def test_amdgpu_compute_users_are_other_gpu_processes_and_the_compositor_is_not(
    amdgpu_box: Box,
) -> None:
    box, clock = amdgpu_box, Clock()
    with monitor(box, clock) as mon:
        mon.watch(ENGINE)
        box.engine_busy(ENGINE, 4, "compute", 900_000_000)  # ours
        box.engine_busy(COMPOSITOR, 12, "gfx", 950_000_000)  # the desktop, all the time
        box.engine_busy(COMPOSITOR, 13, "compute", 0)  # a line, no use
        box.engine_busy(OTHER_SERVER, 5, "compute", 2_500_000_000)
        box.engine_busy(OTHER_SERVER, 6, "compute", 2_500_000_000)  # the same client
        clock.now += 1.0
    record = mon.record
    assert record is not None
    assert record.gpu_other_processes == ["llama-server (pid 4700): compute 2.50 s"]
    assert record.disturbed
    assert record.reasons == ["other processes on the GPU: llama-server (pid 4700): compute 2.50 s"]
    assert "DRM fdinfo" in record.sources


def test_gfx_counts_where_the_owner_says_so(amdgpu_box: Box) -> None:
    box, clock = amdgpu_box, Clock()
    config = DisturbanceConfig(gpu_engines=["compute", "gfx"], allow_other_gpu_processes=True)
    with monitor(box, clock, config) as mon:
        box.engine_busy(COMPOSITOR, 12, "gfx", 950_000_000)
        box.engine_busy(COMPOSITOR, 13, "gfx", 50_000_000)  # its second client adds up
        clock.now += 1.0
    record = mon.record
    assert record is not None
    assert record.gpu_other_processes == ["gnome-shell (pid 4600): gfx 1.00 s"]
    assert not record.disturbed  # measured, and allowed by the owner


def test_a_gpu_user_that_started_during_the_run_counts_from_zero(amdgpu_box: Box) -> None:
    """A process that is new since the start holds a client that began during the run: all
    of its busy time is the run's. An idle client of another process is not another user."""
    box, clock = amdgpu_box, Clock()
    with monitor(box, clock) as mon:
        new = box.root / "proc" / "4800"
        shutil.copytree(box.root / "proc" / str(OTHER_SERVER), new, symlinks=True)
        (new / "stat").write_text(
            box.proc_stat(OTHER_SERVER).read_text()
            .replace("4700 (llama-server)", "4800 (ollama)").replace(" 58000 ", " 61000 ")
        )  # fmt: skip
        for fd in (5, 6):
            info = new / "fdinfo" / str(fd)
            info.write_text(
                info.read_text()
                .replace("drm-client-id:\t1201", "drm-client-id:\t1260")
                .replace("compute:\t51000000000", "compute:\t400000000")
            )  # fmt: skip
        clock.now += 1.0
    record = mon.record
    assert record is not None
    assert record.gpu_other_processes == ["ollama (pid 4800): compute 0.40 s"]


def test_without_dev_dri_no_fd_is_read(amdgpu_box: Box) -> None:
    box, clock = amdgpu_box, Clock()
    shutil.rmtree(box.root / "dev")
    with monitor(box, clock) as mon:
        box.engine_busy(OTHER_SERVER, 5, "compute", 2_500_000_000)
        clock.now += 1.0
    record = mon.record
    assert record is not None
    assert record.gpu_other_processes == [] and "DRM fdinfo" not in record.sources


def test_fd_reads_are_bounded_per_scan(amdgpu_box: Box) -> None:
    proc = amdgpu_box.root / "proc"
    key = ("0000:c5:00.0", "1201")
    # fds 0 1 2 5 6: with three links left, the lowest three are read and no DRM file found
    budget = FdBudget(links=3)
    assert drm_clients(proc, OTHER_SERVER, budget) == {} and budget.links == 0
    assert drm_clients(proc, OTHER_SERVER, budget) == {}  # nothing left: nothing read
    budget = FdBudget(links=100, drm_files=1)
    assert set(drm_clients(proc, OTHER_SERVER, budget)) == {key}
    assert (budget.links, budget.drm_files) == (95, 0)
    assert drm_clients(proc, COMPOSITOR, budget) == {}  # no fdinfo reads left


def test_gpu_engines_in_worker_yaml(tmp_path: Path) -> None:
    assert load_worker_config(_config_file(tmp_path, {})).disturbance.gpu_engines == ["compute"]
    both = load_worker_config(_config_file(tmp_path, {"gpu_engines": ["compute", "gfx"]}))
    assert both.disturbance.gpu_engines == ["compute", "gfx"]
    with pytest.raises(ConfigError, match=r"disturbance.gpu_engines\[0\]: String should match"):
        load_worker_config(_config_file(tmp_path, {"gpu_engines": ["compute engine"]}))


def test_an_engine_the_start_scan_saw_after_the_start_is_all_ours(box: Box) -> None:
    """The start scan runs beside the engine's start: when it reads the engine, the engine may
    already have used CPU since the start. A process whose starttime is after the start
    (/proc/uptime at the start: 605 s = 60500 ticks) is new, so all of that CPU is ours."""
    clock = Clock()
    path = box.proc_stat(ENGINE)
    # started at 606 s, 3 s of CPU used by the time the scan reads it (all after the start)
    path.write_text(
        path.read_text().replace(" 0 0 0 0 20 0 4 0 60000 ", " 300 0 0 0 20 0 4 0 60600 ")
    )
    with monitor(box, clock) as mon:
        mon.watch(ENGINE)
        box.add_cpu(ENGINE, 100)
        box.busy(300 + 100)
        clock.now += 2.0
    record = mon.record
    assert record is not None
    assert record.other_cpu_s == 0.0 and not record.disturbed
