"""Windows GPU telemetry from PDH performance counters: what Task Manager draws.

Reads the counters `worker.telemetry.pdh_gpu` names through pywin32's `win32pdh` (the optional
`orch[windows]` extra), imported only when this source is probed on Windows: elsewhere, or
without pywin32, the status says why and nothing else happens. Rate counters (Utilization
Percentage) need two collections, so the first sample after probe() carries memory only.

The engine's processes are its pid and its descendants (psutil, re-read once a second).

Only the reading layer (`PdhReader`) touches Windows; the source takes any reader, and tests
on Linux replay recorded `typeperf` / `Get-Counter` output through it. PdhReader itself has not
run on a real Windows box in this project's tests (the README says so).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import psutil  # type: ignore[import-untyped]  # no stubs installed; calls are checked by tests

from jobs.telemetry import SourceStatus
from worker.platform import current_platform
from worker.telemetry.base import Every, Source, register_source
from worker.telemetry.pdh_gpu import (
    COUNTER_PATHS,
    CounterValue,
    adapters,
    gpu_metrics,
    split_counter_path,
)

_PDH_CSTATUS_NO_OBJECT = 0xC0000BB8  # pdhmsg.h: the object (GPU Engine) is not on this box
_PDH_CSTATUS_NO_COUNTER = 0xC0000BB9


class CounterReader(Protocol):
    """Opens the counters once, then returns every instance's value at each read."""

    def open(self) -> None: ...

    def read(self) -> list[CounterValue]: ...

    def close(self) -> None: ...


class ReaderUnavailable(Exception):
    """The counters cannot be read on this box (the message says why, for `orch doctor`)."""


class PdhReader:
    """The counters through win32pdh (Windows only)."""

    def __init__(self, paths: tuple[str, ...] = COUNTER_PATHS) -> None:
        self.paths = paths
        self._pdh: Any = None
        self._query: Any = None
        self._counters: list[tuple[str, str, Any]] = []  # (object, counter, handle)

    def open(self) -> None:
        try:
            pdh = importlib.import_module("win32pdh")
        except ImportError as exc:
            raise ReaderUnavailable(
                "pywin32 is not installed (pip install 'orch[windows]')"
            ) from exc
        query = pdh.OpenQuery()
        try:
            for path in self.paths:
                parts = split_counter_path(path)
                assert parts is not None
                self._counters.append((parts[0], parts[2], pdh.AddEnglishCounter(query, path)))
            pdh.CollectQueryData(query)  # the first of the two reads a rate needs
        except pdh.error as exc:
            pdh.CloseQuery(query)
            self._counters = []
            code = exc.args[0] if exc.args else None
            if code in (_PDH_CSTATUS_NO_OBJECT, _PDH_CSTATUS_NO_COUNTER):
                raise ReaderUnavailable(
                    "PDH GPU counters: not available (they need WDDM 2.0+, Windows 10 1709+)"
                ) from exc
            raise ReaderUnavailable(f"PDH GPU counters could not be opened: {exc}") from exc
        self._pdh, self._query = pdh, query

    def read(self) -> list[CounterValue]:
        pdh = self._pdh
        if pdh is None:
            return []
        values: list[CounterValue] = []
        try:
            pdh.CollectQueryData(self._query)
            for object_name, counter, handle in self._counters:
                try:
                    found = pdh.GetFormattedCounterArray(handle, pdh.PDH_FMT_DOUBLE)
                except pdh.error:
                    continue  # no instance right now (no process uses the GPU)
                values += [
                    CounterValue(object_name, instance, counter, float(value))
                    for instance, value in found.items()
                ]
        except pdh.error:
            return []
        return values

    def close(self) -> None:
        if self._pdh is not None:
            self._pdh.CloseQuery(self._query)
            self._pdh = None


@register_source("windows_gpu", precedence=15, platforms=("windows",))
class WindowsGpu(Source):
    """Task Manager's GPU figures for the adapter and for the engine's processes."""

    refresh_s = 1.0

    def __init__(
        self,
        root: Path = Path("/"),
        reader: CounterReader | None = None,
        sys_platform: str | None = None,
        children: Callable[[int], list[int]] | None = None,
    ) -> None:
        super().__init__(root)
        self.platform = current_platform(sys_platform)
        self.reader: CounterReader = reader if reader is not None else PdhReader()
        self._children = children or _descendants
        self._pid: int | None = None
        self._pids: list[int] = []
        self._pids_refresh = Every(self.refresh_s)
        self._open = False

    def probe(self) -> SourceStatus:
        if self.platform != "windows":
            return self.status(False, "PDH GPU counters exist on Windows only")
        try:
            self.reader.open()
        except ReaderUnavailable as exc:
            return self.status(False, str(exc))
        self._open = True
        names = adapters(self.reader.read())
        where = ", ".join(names) if names else "no GPU instance yet"
        return self.status(True, f"PDH GPU Engine / Adapter / Process Memory ({where})")

    def watch(self, pid: int) -> None:
        if pid != self._pid:
            self._pid, self._pids = pid, []
            self._pids_refresh.reset()

    def sample(self, now: float) -> dict[str, float]:
        if not self._open:
            return {}
        if self._pid is not None and self._pids_refresh.due(now):
            self._pids = [self._pid, *self._children(self._pid)]
        return gpu_metrics(self.reader.read(), self._pids)

    def close(self) -> None:
        if self._open:
            self.reader.close()
            self._open = False


def _descendants(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []
