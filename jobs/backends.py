"""What a backend label means, and whether an engine's own report agrees with it.

A worker config names its binaries by orch backend label (`cpu`, `vulkan`, `rocm`, ...). Nothing
stops an owner from filing a CPU build under `vulkan:`, and llama.cpp offloads to any GPU it
finds unless told otherwise, so every run is checked against what the engine said it ran on.
This module is the one rule: the worker applies it after each run (worker/engines/), and
anything that reads results (`orch import`, reports) applies the same rule.

The names are llama.cpp's own (docs/facts.md, "llama.cpp backend and device names")::

    >>> check_backend("vulkan", ["CPU"], 0).verdict
    'mismatch'
    >>> check_backend("rocm", ["ROCm0 (AMD Radeon 8060S)"], 25, layers_total=25).verdict
    'match'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from jobs.result import BackendCheck

CPU = "cpu"
# -ngl for "every layer": llama.cpp clamps it to the model's layer count + 1 (the output layer),
# and both llama-bench (numbers only) and llama-server accept a number, where `all` is
# llama-server's word only (docs/facts.md).
ALL_GPU_LAYERS = 999

# orch label -> the ggml backend registry name llama.cpp reports (`backends` in llama-bench's
# JSON; device names are this name plus an index: "Vulkan0", "ROCm0", "CUDA0", "MTL0").
# A HIP build of ggml-cuda calls itself "ROCm", a MUSA build "MUSA" (ggml/include/ggml-cuda.h).
LLAMA_CPP_BACKENDS: dict[str, str] = {
    "vulkan": "Vulkan",
    "rocm": "ROCm",
    "hip": "ROCm",
    "cuda": "CUDA",
    "musa": "MUSA",
    "metal": "MTL",
    "sycl": "SYCL",
    "opencl": "OpenCL",
    "webgpu": "WebGPU",
}
# Registry names that compute on the CPU: a build with only these offloads nothing to a GPU
# (llama-bench prints "CPU" when no other backend is registered; BLAS/ZenDNN are CPU libraries,
# and its own markdown table counts them as CPU backends).
CPU_SIDE = frozenset({"CPU", "BLAS", "ZenDNN", "AMX"})

_FAMILY = re.compile(r"^\s*([A-Za-z][A-Za-z_-]*?)\d*(?:\s|\(|$)")


def known_label(label: str) -> bool:
    """A label this rule can check (others are kept, marked unverified)."""
    return label == CPU or label in LLAMA_CPP_BACKENDS


def gpu_layers_for(label: str, gpu_layers: int | None) -> int:
    """The -ngl orch passes to llama.cpp: the matrix's `gpu_layers` when it set one, else none
    on `cpu` and every layer on any other backend (llama.cpp's own default, `auto`, would fit
    what it likes, and a CPU job would offload to whatever GPU the build finds)."""
    if gpu_layers is not None:
        return gpu_layers
    return 0 if label == CPU else ALL_GPU_LAYERS


def llama_cpp_offload_args(label: str, gpu_layers: int | None) -> list[str]:
    """The offload flags llama-bench and llama-server both get: `-ngl` always, and on `cpu`
    also `-dev none`: with -ngl 0 alone llama.cpp still sends large prompt batches to a GPU it
    sees (op offload), so a `cpu` pp would be a GPU figure (both tools take `-dev none`)."""
    argv = ["-ngl", str(gpu_layers_for(label, gpu_layers))]
    return argv + (["-dev", "none"] if label == CPU else [])


def family(device: str) -> str:
    """The backend registry name in a device as llama.cpp names it: "Vulkan0 (Radeon)" ->
    "Vulkan", "ROCm1" -> "ROCm", "CPU" -> "CPU" (the text itself when it has no such name)."""
    match = _FAMILY.match(device)
    return match.group(1) if match else device.strip()


def check_backend(
    label: str,
    devices: Sequence[str],
    gpu_layers_offloaded: int | None,
    *,
    gpu_layers_requested: int | None = None,
    gpu_layers_asked: int | None = None,
    layers_total: int | None = None,
    vram_bytes: int | None = None,
    any_offloaded: bool | None = None,
    source: str = "",
) -> BackendCheck:
    """Check the job's backend `label` against what the engine reported.

    `devices`: the backends or devices the engine could offload to, in llama.cpp's names
    ("Vulkan0 (AMD Radeon 8060S)", "ROCm", or "CPU" when it listed none); empty when the engine
    names none (Ollama). `gpu_layers_offloaded`: layers it put on a GPU (None: not reported).
    `gpu_layers_asked`: the job's own `gpu_layers` (0 there makes a GPU label without offload
    fine). `vram_bytes`: model bytes in GPU memory, where that is what the engine reports.
    `any_offloaded`: whether some layer went to a GPU, where the engine implies it without a
    count (llama-bench: a GPU device and a non-zero -ngl).
    """
    check = BackendCheck(
        label=label,
        verdict="unverified",
        devices=list(devices),
        gpu_layers_requested=gpu_layers_requested,
        gpu_layers_offloaded=gpu_layers_offloaded,
        layers_total=layers_total,
        vram_bytes=vram_bytes,
        source=source,
    )
    gpus = [d for d in devices if family(d) not in CPU_SIDE]
    offloaded = _offloaded(gpus, devices, gpu_layers_offloaded, vram_bytes, any_offloaded)
    if not known_label(label):
        verdict, detail = (
            "unverified",
            (
                f"orch does not know which llama.cpp backend `{label}` stands for "
                f"(known: {', '.join([CPU, *LLAMA_CPP_BACKENDS])}); the engine reported "
                f"{_said(devices, gpu_layers_offloaded, layers_total, vram_bytes)}"
            ),
        )
    elif label == CPU:
        verdict, detail = _check_cpu(gpus, offloaded, devices, gpu_layers_offloaded, check)
    else:
        verdict, detail = _check_gpu(label, gpus, offloaded, gpu_layers_asked, devices, check)
    return check.model_copy(update={"verdict": verdict, "detail": detail})


def _offloaded(
    gpus: list[str],
    devices: Sequence[str],
    reported: int | None,
    vram_bytes: int | None,
    any_offloaded: bool | None,
) -> bool | None:
    """Did any of the model run on a GPU? None: the evidence does not say."""
    if vram_bytes is not None:
        return vram_bytes > 0
    if devices and not gpus:
        return False  # no GPU device to offload to, whatever the layer count says
    if reported is not None:
        return reported > 0
    return any_offloaded


def _check_cpu(
    gpus: list[str],
    offloaded: bool | None,
    devices: Sequence[str],
    reported: int | None,
    check: BackendCheck,
) -> tuple[str, str]:
    said = _said(devices, reported, check.layers_total, check.vram_bytes)
    if offloaded:
        return "mismatch", f"a cpu job ran partly on a GPU: the engine reported {said}"
    if offloaded is None:
        return "unverified", f"the engine did not say whether it offloaded: it reported {said}"
    if gpus:
        # -ngl 0 keeps the weights and KV cache on the CPU, but llama.cpp still sends large
        # prompt batches to a GPU it sees (op offload): orch passes `-dev none` on cpu, so a GPU
        # in use means that did not hold.
        return "mismatch", (
            f"a cpu job had a GPU in use ({said}): llama.cpp offloads large prompt batches to "
            "any GPU it may use, so its pp would be a GPU figure"
        )
    return "match", f"no GPU device: the engine reported {said}"


def _check_gpu(
    label: str,
    gpus: list[str],
    offloaded: bool | None,
    asked: int | None,
    devices: Sequence[str],
    check: BackendCheck,
) -> tuple[str, str]:
    expected = LLAMA_CPP_BACKENDS[label]
    said = _said(devices, check.gpu_layers_offloaded, check.layers_total, check.vram_bytes)
    families = sorted({family(d) for d in gpus})
    if gpus and expected not in families:
        return "mismatch", (
            f"backend {label} means llama.cpp's {expected}, but the engine ran with "
            f"{', '.join(families)}: it reported {said}"
        )
    if devices and not gpus:
        return "mismatch", (
            f"backend {label} means llama.cpp's {expected}, but the engine reported only the "
            f"CPU: {said}"
        )
    if asked == 0:
        return ("match" if gpus else "unverified"), (
            f"the job asked for gpu_layers 0, so no layer on the GPU is expected: {said}"
        )
    if offloaded is False:
        return "mismatch", f"backend {label}, but no layer was offloaded to a GPU: {said}"
    if not gpus:
        if offloaded:
            return "unverified", (
                f"the model was on a GPU ({said}), but the engine does not say which backend "
                f"ran it, so `{label}` cannot be checked"
            )
        return "unverified", f"the engine reported no device and no offload: {said}"
    if offloaded is None:
        return "match", f"{expected} device in use, layer count not reported: {said}"
    return "match", f"ran on {expected}: {said}"


def _said(
    devices: Sequence[str], offloaded: int | None, total: int | None, vram_bytes: int | None
) -> str:
    parts = [f"devices {', '.join(devices)}" if devices else "no device names"]
    if offloaded is not None:
        parts.append(f"offloaded {offloaded}/{total} layers" if total else f"{offloaded} layers")
    if vram_bytes is not None:
        parts.append(f"{vram_bytes} model bytes in GPU memory")
    return "; ".join(parts)


# --- llama.cpp's own reports (docs/facts.md, "llama.cpp backend and device names") ------------

# src/llama.cpp, llama_prepare_model_devices: "%s: using device %s (%s) (%s) - %zu MiB free"
# (name, description, device id or "unknown id"); a description may hold parentheses itself
# ("Radeon 8060S Graphics (RADV GFX1151)"). The id group is optional so that a line without one
# still names its device.
_USING_DEVICE = re.compile(
    r"using device (\S+) \((.*?)\)(?: \([^()]*\))? - \d+ MiB free[ \t\r]*$", re.MULTILINE
)
# src/llama-model.cpp, load_tensors: "%s: offloaded %d/%d layers to GPU"
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
# src/llama-model.cpp, load_tensors: "%s: %12s model buffer size = %8.2f MiB", printed for every
# model load: a log without it did not capture llama.cpp's load messages at all (llama-server
# shows them only from -lv 4 up: common/log.cpp maps llama's INFO level to LOG_LEVEL_TRACE).
_MODEL_BUFFER = re.compile(r"model buffer size = ")
# Only the load part of a log is read: a server's log grows with every request.
LOG_HEAD_CHARS = 1 << 20


def check_llama_bench_row(
    label: str, row: Mapping[str, Any], *, gpu_layers_asked: int | None = None
) -> BackendCheck:
    """The check from one object of `llama-bench -o json`: `backends` (registered backends other
    than the CPU, "CPU" when none), `gpu_info` (descriptions of the GPU devices it found, ", "
    joined), `devices` ("auto", "none" or the names given to -dev) and `n_gpu_layers` (the -ngl
    it ran with). It prints no offload count; a GPU device with -ngl > 0 offloads at least one
    layer (llama-model.cpp: min(ngl, layers + 1))."""
    backends = [b.strip() for b in str(row.get("backends") or "").split(",") if b.strip()]
    gpu_info = [d.strip() for d in str(row.get("gpu_info") or "").split(", ") if d.strip()]
    requested = _int_or_none(row.get("n_gpu_layers"))
    gpu_families = [b for b in backends if b not in CPU_SIDE]
    in_use = bool(gpu_info) and bool(gpu_families) and row.get("devices") != "none"
    if not in_use:
        devices = ["CPU"] if backends else []
    elif len(gpu_families) == 1:
        devices = [f"{gpu_families[0]} ({d})" for d in gpu_info]
    else:  # several GPU backends: the descriptions cannot be told apart by backend
        devices = gpu_families
    source = (
        f"llama-bench json: backends {row.get('backends')!r}, gpu_info {row.get('gpu_info')!r}, "
        f"devices {row.get('devices')!r}, n_gpu_layers {row.get('n_gpu_layers')!r}"
    )
    return check_backend(
        label,
        devices,
        0 if (requested == 0 or not in_use) and devices else None,
        gpu_layers_requested=requested,
        gpu_layers_asked=gpu_layers_asked,
        any_offloaded=in_use and requested != 0 if requested is not None else None,
        source=source,
    )


def check_llama_log(
    label: str,
    log: str,
    *,
    gpu_layers_requested: int | None,
    gpu_layers_asked: int | None = None,
    source: str = "load log",
) -> BackendCheck:
    """The check from a llama.cpp program's load log (llama-server's stderr): its "using device"
    lines and "offloaded N/M layers to GPU". A log with neither but with the loader's "model
    buffer size" lines means no GPU device was in use: llama.cpp offloads nothing then, whatever
    -ngl says (llama-model.cpp: act_gpu_layers = devices.empty() ? 0 : ...). A log without the
    loader's lines proves nothing (unverified)."""
    head = log[:LOG_HEAD_CHARS]
    devices = [f"{m.group(1)} ({m.group(2)})" for m in _USING_DEVICE.finditer(head)]
    offload = _OFFLOADED.search(head)
    offloaded = int(offload.group(1)) if offload else None
    total = int(offload.group(2)) if offload else None
    if not devices and _MODEL_BUFFER.search(head):
        devices, offloaded = ["CPU"], 0
    quoted = [line.strip() for line in head.splitlines() if _quotable(line)][:6]
    return check_backend(
        label,
        devices,
        offloaded,
        gpu_layers_requested=gpu_layers_requested,
        gpu_layers_asked=gpu_layers_asked,
        layers_total=total,
        source=f"{source}: " + (" | ".join(quoted) if quoted else "no device or offload line"),
    )


def _quotable(line: str) -> bool:
    return bool(_USING_DEVICE.search(line) or _OFFLOADED.search(line))


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value))
    except ValueError:
        return None


def mislabelled_error(check: BackendCheck) -> str | None:
    """The error of a run that went well on another backend than its label, or None when the
    check does not say so: the worker (after a run) and `orch import` (on a file) both file such
    a run as Status.MISLABELLED with this text."""
    if check.verdict != "mismatch":
        return None
    return f"not run on backend {check.label}: {check.detail} ({check.source})"
