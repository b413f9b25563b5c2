"""macOS (Apple Silicon) telemetry: `ioreg` GPU statistics and `powermetrics` power.

ioreg (no root): `ioreg -r -d 1 -w 0 -c IOAccelerator -a` prints a plist array with one dict
per GPU (AGXAcceleratorG13X and kin); its `PerformanceStatistics` dict holds `Device
Utilization %`, `Renderer Utilization %`, `Tiler Utilization %` and `In use system memory`
(bytes). Keys as read by XReyRobert/macos-telegraf-gpumonitoring
gpuPerformanceStatistics/main.swift @ fbf2bd27 and cemlyn007/apple-gpu apple_gpu/_src.py.
Metrics: `gpu_busy_pct` (Device), `gpu_renderer_busy_pct`, `gpu_tiler_busy_pct`, and
`gtt_used_bytes` (system memory in use by the GPU: Apple Silicon has no VRAM, all of it is
shared system memory, the quantity Linux calls GTT). Read once a second: each read starts ioreg.

powermetrics (root only): `powermetrics -f plist --samplers cpu_power,gpu_power,ane_power -i MS`
writes one plist per interval, NUL-separated. Its `processor` dict carries `cpu_power`,
`gpu_power`, `ane_power`, `combined_power` (mW) on current macOS and `cpu_energy`,
`gpu_energy`, `ane_energy` (mJ over `elapsed_ns`) on older ones (tlkh/asitop asitop/parsers.py
@ 3548aeeb reads the latter). Metrics: `power_w` (combined: CPU + GPU + ANE, like an APU's
package power, so `power_includes_cpu`), `gpu_power_w`, `cpu_power_w`, `ane_power_w`.
"""

from __future__ import annotations

import contextlib
import os
import plistlib
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from xml.parsers.expat import ExpatError

from jobs.telemetry import SourceStatus
from worker.platform import current_platform
from worker.platform import proc as platform_proc
from worker.telemetry.base import Every, Source, register_source

IOREG_ARGV = ("ioreg", "-r", "-d", "1", "-w", "0", "-c", "IOAccelerator", "-a")
POWERMETRICS_SAMPLERS = "cpu_power,gpu_power,ane_power"
MAX_PLIST_BYTES = 16 * 1024 * 1024  # a real ioreg answer is ~10 KB, a powermetrics sample ~5 KB
_IOREG_METRICS = (
    ("Device Utilization %", "gpu_busy_pct"),
    ("Renderer Utilization %", "gpu_renderer_busy_pct"),
    ("Tiler Utilization %", "gpu_tiler_busy_pct"),
)
_POWER = (("cpu", "cpu_power_w"), ("gpu", "gpu_power_w"), ("ane", "ane_power_w"))


class PlistError(ValueError):
    """Output that is not the plist it should be."""


def _load(data: bytes) -> Any:
    if len(data) > MAX_PLIST_BYTES:
        raise PlistError(f"plist of {len(data)} bytes is over {MAX_PLIST_BYTES}")
    try:
        return plistlib.loads(data)
    except (plistlib.InvalidFileException, ExpatError, ValueError, TypeError, KeyError) as exc:
        raise PlistError(f"not a plist: {exc}") from exc


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


def parse_ioreg(data: bytes) -> tuple[dict[str, float], list[str]]:
    """Metrics of every IOAccelerator's PerformanceStatistics (busy % averaged over GPUs,
    memory summed), and each GPU's `model` or IOClass name."""
    entries = _load(data)
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        raise PlistError("ioreg -a should print an array of registry entries")
    busy: dict[str, list[float]] = {}
    out: dict[str, float] = {}
    names = []
    for entry in entries:
        stats = entry.get("PerformanceStatistics") if isinstance(entry, dict) else None
        if not isinstance(stats, dict):
            continue
        names.append(str(entry.get("model") or entry.get("IOClass") or "IOAccelerator"))
        for key, metric in _IOREG_METRICS:
            value = _number(stats.get(key))
            if value is not None:
                busy.setdefault(metric, []).append(min(value, 100.0))
        memory = _number(stats.get("In use system memory"))
        if memory is not None:
            out["gtt_used_bytes"] = out.get("gtt_used_bytes", 0.0) + memory
    for metric, values in busy.items():
        out[metric] = sum(values) / len(values)
    return out, names


def parse_powermetrics_sample(data: bytes) -> dict[str, float]:
    """Power metrics (W) of one powermetrics plist sample."""
    sample = _load(data)
    processor = sample.get("processor") if isinstance(sample, dict) else None
    if not isinstance(processor, dict):
        raise PlistError("powermetrics sample without a processor dict (sampler cpu_power)")
    elapsed_ns = _number(sample.get("elapsed_ns"))
    out: dict[str, float] = {}
    for part, metric in _POWER:
        milli_w = _number(processor.get(f"{part}_power"))
        milli_j = _number(processor.get(f"{part}_energy"))
        if milli_w is None and milli_j is not None and elapsed_ns:
            milli_w = milli_j / (elapsed_ns / 1e9)
        if milli_w is not None:
            out[metric] = milli_w / 1000
    combined = _number(processor.get("combined_power"))
    if combined is not None:
        out["power_w"] = combined / 1000
    elif out:
        out["power_w"] = sum(out.values())
    return out


def split_samples(buffer: bytearray) -> list[bytes]:
    """Take the complete NUL-terminated samples out of `buffer` (the rest stays in it)."""
    *done, rest = bytes(buffer).split(b"\0")
    buffer[:] = rest
    return [chunk for chunk in done if chunk.strip()]


Run = Callable[[Sequence[str]], bytes]


def _run_ioreg(argv: Sequence[str]) -> bytes:
    done = subprocess.run(list(argv), capture_output=True, timeout=5, check=True)
    return done.stdout


@register_source("ioreg_gpu", precedence=25, platforms=("macos",))
class IoregGpu(Source):
    """Apple GPU busy % and GPU memory from the IORegistry (no root needed)."""

    every_s = 1.0

    def __init__(
        self, root: Path = Path("/"), run: Run = _run_ioreg, sys_platform: str | None = None
    ) -> None:
        super().__init__(root)
        self.run = run
        self.platform = current_platform(sys_platform)
        self._due = Every(self.every_s)
        self._ok = False

    def probe(self) -> SourceStatus:
        if self.platform != "macos":
            return self.status(False, "ioreg IOAccelerator statistics exist on macOS only")
        try:
            metrics, names = parse_ioreg(self.run(IOREG_ARGV))
        except (OSError, subprocess.SubprocessError, PlistError) as exc:
            return self.status(False, f"`{' '.join(IOREG_ARGV)}` failed: {exc}")
        if not metrics:
            return self.status(False, "no IOAccelerator has PerformanceStatistics")
        self._ok = True
        return self.status(True, f"{', '.join(names)} (ioreg PerformanceStatistics)")

    def sample(self, now: float) -> dict[str, float]:
        if not self._ok or not self._due.due(now):
            return {}
        try:
            return parse_ioreg(self.run(IOREG_ARGV))[0]
        except (OSError, subprocess.SubprocessError, PlistError):
            return {}


@register_source("powermetrics", precedence=12, platforms=("macos",))
class Powermetrics(Source):
    """CPU / GPU / ANE power from a powermetrics child that streams plist samples."""

    interval_ms = 500

    def __init__(
        self,
        root: Path = Path("/"),
        sys_platform: str | None = None,
        binary: str = "powermetrics",
        is_root: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(root)
        self.platform = current_platform(sys_platform)
        self.binary = binary
        self.is_root = is_root or (lambda: hasattr(os, "geteuid") and os.geteuid() == 0)
        self._proc: subprocess.Popen[bytes] | None = None
        self._latest: dict[str, float] = {}
        self._fresh = False
        self._lock = threading.Lock()

    def probe(self) -> SourceStatus:
        if self.platform != "macos":
            return self.status(False, "powermetrics exists on macOS only")
        path = shutil.which(self.binary)
        if path is None:
            return self.status(False, f"{self.binary} is not on PATH")
        if not self.is_root():
            return self.status(
                False,
                "powermetrics needs root: run the worker as root to get GPU/CPU/ANE power "
                "(ioreg still gives GPU busy % and memory)",
            )
        argv = [path, "-f", "plist", "--samplers", POWERMETRICS_SAMPLERS,
                "-i", str(self.interval_ms)]  # fmt: skip
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, **platform_proc.group_popen_kwargs(),
            )  # fmt: skip
        except OSError as exc:
            return self.status(False, f"{path} could not start: {exc.strerror or exc}")
        threading.Thread(target=self._read, daemon=True, name="orch-powermetrics").start()
        detail = f"{path} every {self.interval_ms} ms: CPU + GPU + ANE power"
        return self.status(True, detail, power_includes_cpu=True)

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        buffer = bytearray()
        with proc.stdout:
            while chunk := os.read(proc.stdout.fileno(), 64 * 1024):
                buffer += chunk
                if len(buffer) > MAX_PLIST_BYTES:
                    buffer.clear()  # no separator in 16 MB: not powermetrics output
                for raw in split_samples(buffer):
                    with contextlib.suppress(PlistError):
                        reading = parse_powermetrics_sample(raw)
                        with self._lock:
                            self._latest, self._fresh = reading, True

    def sample(self, now: float) -> dict[str, float]:
        """The newest sample powermetrics wrote, once (an interval's average power)."""
        with self._lock:
            if not self._fresh:
                return {}
            self._fresh = False
            return dict(self._latest)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
