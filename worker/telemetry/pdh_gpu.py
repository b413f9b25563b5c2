"""Windows GPU performance counters (PDH) -> metrics: what Task Manager's GPU pages show.

Pure parsing and arithmetic, so it runs (and is tested) on any platform; the Windows-only
collector is `worker.telemetry.windows_gpu`. Counters (WDDM 2.0+, Windows 10 1709+; the
DirectX team's "GPUs in the Task Manager", devblogs.microsoft.com/directx, 2017-07-21; counter
lists as in winsiderss/systeminformer plugins/ExtendedTools/counters.c @ f0f1d7e6):

- `\\GPU Engine(pid_<pid>_luid_0x<hi>_0x<lo>_phys_<n>_eng_<n>_engtype_<Type>)\\Utilization
  Percentage`: one instance per process and engine (types 3D, Compute_0, Copy, VideoDecode...).
- `\\GPU Adapter Memory(luid_..._phys_<n>)\\Dedicated Usage` and `Shared Usage` (bytes).
- `\\GPU Process Memory(pid_<pid>_luid_..._phys_<n>)\\Dedicated Usage` and `Shared Usage`.

Task Manager's arithmetic, kept here: an engine's busy % is the sum over the processes using
it (capped at 100); an engine type's is its busiest engine's; the GPU's is its busiest engine's.

Metrics (names shared with the Linux sources where the quantity is the same, see
`jobs.telemetry`): `gpu_busy_pct`, `gpu_<type>_busy_pct` (adapter-wide per engine type:
`gpu_3d_busy_pct`, `gpu_copy_busy_pct`, `gpu_compute_busy_pct`, `gpu_videodecode_busy_pct`);
for the engine's processes `engine_gfx_busy_pct` (3D), `engine_compute_busy_pct`,
`engine_dma_busy_pct` (Copy: the copy engine, as amdgpu's SDMA on Linux) and
`engine_<type>_busy_pct` for other types; `vram_used_bytes` / `gtt_used_bytes` (the adapter's
dedicated / shared GPU memory: Windows' "shared GPU memory" is system RAM the GPU maps, what
Linux calls GTT) and `drm_vram_bytes` / `drm_gtt_bytes` (the same two for the engine's processes).

Adapter-wide figures cover the adapters the engine's processes use (an APU laptop also lists
a dGPU and the Microsoft Basic Render Driver); when they use none, every adapter counts.

Inputs: `typeperf ... -f CSV` output (`parse_typeperf_csv`), `Get-Counter` samples as JSON
(`parse_get_counter_json`), or (pid-less) instance -> value dicts from win32pdh.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

# Bounds on hostile input: a real box has a few hundred GPU Engine instances.
MAX_VALUES = 100_000
MAX_TEXT_BYTES = 64 * 1024 * 1024

_PATH = re.compile(
    r"^(?:\\\\[^\\]+)?\\(?P<object>[^\\(]+)\((?P<instance>.*)\)\\(?P<counter>[^\\]+)$"
)
_LUID = r"luid_(?P<luid>0x[0-9a-f]+_0x[0-9a-f]+)_phys_(?P<phys>\d+)"
_ENGINE = re.compile(rf"^pid_(?P<pid>\d+)_{_LUID}_eng_(?P<eng>\d+)_engtype_(?P<type>.*)$", re.I)
_PROCESS_MEMORY = re.compile(rf"^pid_(?P<pid>\d+)_{_LUID}$", re.I)
_ADAPTER_MEMORY = re.compile(rf"^{_LUID}$", re.I)
_TYPE_INDEX = re.compile(r"_\d+$")  # Compute_0, Compute_1 are engines of one type
_NOT_NAME = re.compile(r"[^a-z0-9]+")
# Engine types whose per-process metric keeps the Linux DRM engine's name (drm_fdinfo).
_LINUX_ENGINE = {"3d": "gfx", "copy": "dma", "compute": "compute"}
_MEMORY = {"dedicated usage": ("vram_used_bytes", "drm_vram_bytes"),
           "shared usage": ("gtt_used_bytes", "drm_gtt_bytes")}  # fmt: skip

ENGINE_OBJECT = "gpu engine"
ADAPTER_MEMORY_OBJECT = "gpu adapter memory"
PROCESS_MEMORY_OBJECT = "gpu process memory"
# English counter paths the collector asks for (PdhAddEnglishCounter: any display language).
COUNTER_PATHS = (
    r"\GPU Engine(*)\Utilization Percentage",
    r"\GPU Adapter Memory(*)\Dedicated Usage",
    r"\GPU Adapter Memory(*)\Shared Usage",
    r"\GPU Process Memory(*)\Dedicated Usage",
    r"\GPU Process Memory(*)\Shared Usage",
)


class PdhFormatError(ValueError):
    """The text is not the counter output it should be (the message says where)."""


@dataclass(frozen=True)
class CounterValue:
    """One counter instance's value; object and counter names lower-cased (Get-Counter prints
    them so, typeperf as registered)."""

    object: str
    instance: str
    counter: str
    value: float


def split_counter_path(path: str) -> tuple[str, str, str] | None:
    """`\\\\HOST\\GPU Engine(inst)\\Utilization Percentage` -> (object, instance, counter)."""
    match = _PATH.match(path.strip())
    if match is None:
        return None
    return (match["object"].strip().lower(), match["instance"], match["counter"].strip().lower())


def counter_value(path: str, value: object) -> CounterValue | None:
    """A CounterValue from a path and a printed value; None for an unknown path or no value."""
    parts = split_counter_path(path)
    number = _number(value)
    if parts is None or number is None:
        return None
    return CounterValue(parts[0], parts[1], parts[2], number)


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None  # typeperf prints " " for an instance that has no value yet
    return number if math.isfinite(number) and number >= 0 else None


def parse_typeperf_csv(text: str) -> list[list[CounterValue]]:
    """Samples of `typeperf COUNTER... -f CSV`: a header row `"(PDH-CSV 4.0) (zone)(bias)",
    paths...`, then one row per sample (timestamp, values). Status lines typeperf prints on
    the console around the CSV are skipped."""
    if len(text) > MAX_TEXT_BYTES:
        raise PdhFormatError(f"typeperf output of {len(text)} bytes is over {MAX_TEXT_BYTES}")
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    start = next((i for i, row in enumerate(rows) if row[0].startswith("(PDH-CSV")), None)
    if start is None:
        raise PdhFormatError('no "(PDH-CSV ...)" header row: not typeperf -f CSV output')
    paths = rows[start][1:]
    samples: list[list[CounterValue]] = []
    for line, row in enumerate(rows[start + 1 :], start=start + 2):
        if len(row) != len(paths) + 1:
            continue  # "Exiting, please wait..." and similar console lines
        sample = [v for p, raw in zip(paths, row[1:], strict=True) if (v := counter_value(p, raw))]
        if len(sample) > MAX_VALUES:
            raise PdhFormatError(f"row {line}: more than {MAX_VALUES} values")
        samples.append(sample)
    return samples


def parse_get_counter_json(text: str) -> list[CounterValue]:
    """One sample of `(Get-Counter PATHS).CounterSamples | Select-Object Path, InstanceName,
    CookedValue | ConvertTo-Json`: a list of {Path, CookedValue} (a single object when only
    one instance exists)."""
    if len(text) > MAX_TEXT_BYTES:
        raise PdhFormatError(f"Get-Counter output of {len(text)} bytes is over {MAX_TEXT_BYTES}")
    try:
        data = json.loads(text.lstrip("\ufeff"))  # Windows PowerShell 5.1 may write a BOM
    except ValueError as exc:
        raise PdhFormatError(f"Get-Counter output is not JSON: {exc}") from exc
    items = data if isinstance(data, list) else [data]
    if len(items) > MAX_VALUES:
        raise PdhFormatError(f"more than {MAX_VALUES} counter samples")
    found = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("Path"), str):
            raise PdhFormatError(f"sample {index}: no Path (select Path, CookedValue)")
        value = counter_value(item["Path"], item.get("CookedValue"))
        if value is not None:
            found.append(value)
    return found


def from_instances(object_name: str, counter: str, values: dict[str, float]) -> list[CounterValue]:
    """CounterValues from win32pdh.GetFormattedCounterArray's instance -> value dict."""
    out = []
    for instance, raw in values.items():
        number = _number(raw)
        if number is not None:
            out.append(CounterValue(object_name.lower(), instance, counter.lower(), number))
    return out


def engine_type(raw: str) -> str | None:
    """`Compute_1` -> "compute", `VideoDecode` -> "videodecode"; None for an unnamed engine."""
    name = _NOT_NAME.sub("_", _TYPE_INDEX.sub("", raw.strip()).lower()).strip("_")
    return name or None


def process_engine_metric(kind: str) -> str:
    return f"engine_{_LINUX_ENGINE.get(kind, kind)}_busy_pct"


@dataclass
class _Parsed:
    # (luid, phys, eng) -> (engine type, {pid: busy %})
    engines: dict[tuple[str, str, str], tuple[str, dict[int, float]]]
    adapter_memory: dict[tuple[str, str], dict[str, float]]  # (luid, phys) -> counter -> bytes
    process_memory: dict[tuple[int, str, str], dict[str, float]]


def _parse(values: Iterable[CounterValue]) -> _Parsed:
    parsed = _Parsed({}, {}, {})
    for v in values:
        if v.object == ENGINE_OBJECT and v.counter == "utilization percentage":
            m = _ENGINE.match(v.instance)
            kind = engine_type(m["type"]) if m else None
            if m and kind:
                key = (m["luid"].lower(), m["phys"], m["eng"])
                by_pid = parsed.engines.setdefault(key, (kind, {}))[1]
                by_pid[int(m["pid"])] = by_pid.get(int(m["pid"]), 0.0) + v.value
        elif v.object == ADAPTER_MEMORY_OBJECT and v.counter in _MEMORY:
            m = _ADAPTER_MEMORY.match(v.instance)
            if m:
                adapter = parsed.adapter_memory.setdefault((m["luid"].lower(), m["phys"]), {})
                adapter[v.counter] = v.value
        elif v.object == PROCESS_MEMORY_OBJECT and v.counter in _MEMORY:
            m = _PROCESS_MEMORY.match(v.instance)
            if m:
                key3 = (int(m["pid"]), m["luid"].lower(), m["phys"])
                parsed.process_memory.setdefault(key3, {})[v.counter] = v.value
    return parsed


def gpu_metrics(values: Iterable[CounterValue], pids: Iterable[int] = ()) -> dict[str, float]:
    """Metrics of one sample; `pids` are the engine's processes (empty: adapter-wide only)."""
    parsed = _parse(values)
    watched = set(pids)
    used = {(luid, phys) for (luid, phys, _), (_, by_pid) in parsed.engines.items()
            if watched & by_pid.keys()}  # fmt: skip
    used |= {(luid, phys) for (pid, luid, phys) in parsed.process_memory if pid in watched}
    out: dict[str, float] = {}
    for (luid, phys, _eng), (kind, by_pid) in parsed.engines.items():
        if used and (luid, phys) not in used:
            continue
        busy = min(100.0, sum(by_pid.values()))
        _keep_max(out, "gpu_busy_pct", busy)
        _keep_max(out, f"gpu_{kind}_busy_pct", busy)
        mine = [value for pid, value in by_pid.items() if pid in watched]
        if watched:
            _keep_max(out, process_engine_metric(kind), min(100.0, sum(mine)))
    for adapter, counters in parsed.adapter_memory.items():
        if used and adapter not in used:
            continue
        for counter, size in counters.items():
            name = _MEMORY[counter][0]
            out[name] = out.get(name, 0.0) + size
    for (pid, _luid, _phys), counters in parsed.process_memory.items():
        if pid in watched:
            for counter, size in counters.items():
                name = _MEMORY[counter][1]
                out[name] = out.get(name, 0.0) + size
    return out


def _keep_max(out: dict[str, float], name: str, value: float) -> None:
    out[name] = max(out.get(name, 0.0), value)


def adapters(values: Iterable[CounterValue]) -> list[str]:
    """`luid_..._phys_N` of every adapter the sample names, for a status line."""
    parsed = _parse(values)
    found = {f"luid_{luid}_phys_{phys}" for (luid, phys, _) in parsed.engines}
    found |= {f"luid_{luid}_phys_{phys}" for (luid, phys) in parsed.adapter_memory}
    return sorted(found)
