"""DRM fdinfo of the engine's processes: per-engine busy % (the copy engine too) and GPU memory.

The kernel's DRM client usage stats (Documentation/gpu/drm-usage-stats.rst) appear in
`/proc/PID/fdinfo/FD` for every open DRM file: `drm-engine-<name>: <ns> ns` (busy time, gfx /
compute / dma on amdgpu), optional `drm-engine-capacity-<name>: <n>`, and memory as
`drm-resident-<region>` or its deprecated alias `drm-memory-<region>` (bytes, or with a `KiB` /
`MiB` unit). Busy % of an engine = increase of its ns counter / wall ns / capacity, over the
clients of the watched process and its children.

A DRM file can sit behind several fds (dup, fork, SCM_RIGHTS); `drm-client-id` names the file
(unique per device when `drm-pdev` is printed), so each client is counted once.

Works for any DRM driver (engine names differ: i915 has render/copy/video). The files are
readable for processes of the same user; the fds are re-listed once a second.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

from jobs.telemetry import SourceStatus
from worker.sysfs import read_text
from worker.telemetry.base import Every, Source, register_source
from worker.telemetry.counters import CounterDeltas, ProcessTree

_UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "ns": 1}
# amdgpu omits an engine it has never used; once a client exists these read as 0 ns (idle),
# so "the copy engine was never busy" shows as 0 % instead of a missing metric.
_AMDGPU_ENGINES = ("gfx", "compute", "dma")
# Regions reported as metrics; other regions (cpu, system) are not GPU memory.
_REGIONS = {"vram": "drm_vram_bytes", "gtt": "drm_gtt_bytes"}
_NOT_METRIC_CHARS = re.compile(r"[^a-z0-9]+")
_DRM_DEVICE = re.compile(r"(card|renderD)\d+$")


@dataclass
class Client:
    """One DRM file's usage stats, as parsed from an fdinfo file."""

    driver: str | None = None
    key: Hashable = None
    engines_ns: dict[str, int] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)
    memory_bytes: dict[str, int] = field(default_factory=dict)


def _number(value: str) -> int | None:
    parts = value.split()
    if not parts or not parts[0].isdigit():
        return None
    unit = parts[1] if len(parts) > 1 else ""
    scale = _UNITS.get(unit)
    return None if scale is None else int(parts[0]) * scale


def parse_fdinfo(text: str, fallback_key: Hashable) -> Client | None:
    """A Client from an fdinfo file's text; None when the fd is not a DRM file."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.startswith("drm-"):
            fields[key] = value.strip()
    driver = fields.get("drm-driver")
    if driver is None:
        return None
    client = Client(driver=driver)
    resident: dict[str, int] = {}
    legacy: dict[str, int] = {}
    # Longest prefix first: drm-engine-capacity-gfx is not an engine named "capacity-gfx".
    prefixes = (
        ("drm-engine-capacity-", client.capacity),
        ("drm-engine-", client.engines_ns),
        ("drm-resident-", resident),
        ("drm-memory-", legacy),
    )
    for key, value in fields.items():
        number = _number(value)
        target = next(((p, t) for p, t in prefixes if key.startswith(p)), None)
        if number is not None and target is not None:
            target[1][key.removeprefix(target[0])] = number
    client.capacity = {engine: n for engine, n in client.capacity.items() if n > 0}
    # drm-memory-<region> is the older name of drm-resident-<region>; amdgpu may print both.
    client.memory_bytes = {**legacy, **resident}
    if driver == "amdgpu":
        for engine in _AMDGPU_ENGINES:
            client.engines_ns.setdefault(engine, 0)
    client_id = fields.get("drm-client-id")
    # Client ids are unique per device when drm-pdev is printed, so the key holds both.
    client.key = (fields.get("drm-pdev", ""), client_id) if client_id else fallback_key
    return client


def drm_fds(proc: Path | str, pid: int, limit: int | None = None) -> tuple[list[str], int]:
    """The fds of `pid` that are DRM files (links to /dev/dri/*), and how many links were read:
    at most `limit`, lowest fds first (a browser holds thousands of fds; the disturbance check
    reads every process's and bounds what it spends)."""
    folder = f"{os.fspath(proc)}/{pid}/fd"
    try:
        names = os.listdir(folder)
    except OSError:
        return [], 0
    if limit is not None and len(names) > limit:
        names = sorted(names, key=lambda n: int(n) if n.isdigit() else 0)[: max(limit, 0)]
    found = []
    for name in names:
        try:
            target = os.readlink(f"{folder}/{name}")
        except OSError:
            continue
        if target.startswith("/dev/dri/"):
            found.append(name)
    return found, len(names)


def engine_metric(engine: str) -> str:
    return f"engine_{_NOT_METRIC_CHARS.sub('_', engine.lower()).strip('_')}_busy_pct"


@register_source("drm_fdinfo", precedence=30, platforms=("linux",))
class DrmFdinfo(Source):
    """Per-engine GPU busy % and GPU memory of the watched process tree."""

    refresh_s = 1.0

    def __init__(self, root: Path = Path("/")) -> None:
        super().__init__(root)
        self.proc = root / "proc"
        self._tree = ProcessTree(self.proc, self.refresh_s)
        self._engines = CounterDeltas()
        self._drm_fds: dict[int, list[str]] = {}
        self._fds_refresh = Every(self.refresh_s)
        self._last_now: float | None = None

    def probe(self) -> SourceStatus:
        if not self.proc.is_dir():
            return self.status(False, f"no {self.proc} (fdinfo exists on Linux only)")
        drm = self.root / "sys" / "class" / "drm"
        try:
            devices = sorted(p.name for p in drm.iterdir() if _DRM_DEVICE.match(p.name))
        except OSError:
            devices = []
        if not devices:
            # An NVIDIA-only box without nvidia-drm: nothing to read, so spend nothing on it.
            return self.status(False, f"no DRM device under {drm}")
        return self.status(True, f"DRM clients of {', '.join(devices)} in PID/fdinfo")

    def watch(self, pid: int) -> None:
        if pid != self._tree.root_pid:
            self._tree.watch(pid)
            self._engines.reset()
            self._drm_fds, self._last_now = {}, None
            self._fds_refresh.reset()

    def sample(self, now: float) -> dict[str, float]:
        pids = self._tree.pids(now)
        if not pids:
            return {}
        if self._fds_refresh.due(now):
            self._drm_fds = {pid: self._drm_fds_of(pid) for pid in pids}
        clients = self._clients()
        counters: dict[tuple[str, Hashable], float] = {}
        capacity: dict[str, int] = {}
        out: dict[str, float] = {}
        for client in clients.values():
            for engine, ns in client.engines_ns.items():
                counters[(engine, client.key)] = ns
            for engine, count in client.capacity.items():
                capacity[engine] = max(capacity.get(engine, 1), count)
            for region, size in client.memory_bytes.items():
                if region in _REGIONS:
                    out[_REGIONS[region]] = out.get(_REGIONS[region], 0.0) + size
        increase = self._engines.update(counters)
        last, self._last_now = self._last_now, now
        if increase is not None and last is not None and now > last:
            wall_ns = (now - last) * 1e9
            for engine, busy_ns in increase.items():
                share = busy_ns / (wall_ns * capacity.get(engine, 1))
                # Clock jitter between the kernel's accounting and our reads can overshoot.
                out[engine_metric(engine)] = min(100.0, 100.0 * share)
        return out

    def _drm_fds_of(self, pid: int) -> list[str]:
        return drm_fds(self.proc, pid)[0]

    def _clients(self) -> dict[Hashable, Client]:
        clients: dict[Hashable, Client] = {}
        for pid, fds in self._drm_fds.items():
            for fd in fds:
                text = read_text(self.proc / str(pid) / "fdinfo" / fd)
                if text is None:
                    continue  # closed since the fds were listed
                client = parse_fdinfo(text, fallback_key=(pid, fd))
                if client is not None:
                    clients.setdefault(client.key, client)
        return clients
