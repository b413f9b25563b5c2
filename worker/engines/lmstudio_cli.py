"""The `lms` CLI as the LM Studio engine drives it: load and unload, list and select runtimes.

Flags, outputs and exit codes follow lmstudio-ai/lms at 07b7252 (src/subcommands/load.ts,
unload.ts, list.ts for `ps`, runtime/list.ts, runtime/select.ts, createClient.ts):

- `lms load KEY` matches KEY fuzzily against the downloaded models; without `-y` several matches
  open an interactive picker, which with stdin not a terminal exits 1 having loaded nothing. With
  `-y` the first match is loaded, so the engine checks afterwards which model the instance holds.
- `lms load KEY --estimate-only` loads nothing and prints, through its logger (on stderr:
  logLevel.ts makes a Console whose stdout is process.stderr), `Estimated GPU Memory:   X` and
  `Estimated Total Memory: Y` (formatBytes.ts formatSizeBytes1024: "0 Bytes" or two decimals
  and KiB/MiB/GiB/TiB), `Confidence: LOW` when it is low, and `Estimate: This model may be
  loaded ...` or `... will fail to load based on your resource guardrails settings.`; it exits
  0 either way. `lms load` has no flash-attention or KV-cache flag at that commit.
- `lms unload ID` exits 0 even when no instance has that identifier ("Model Not Found").
- `lms runtime ls` has no JSON output: a table `LLM ENGINE  SELECTED  MODEL FORMAT` with rows
  `name@version  ✓  gguf` (columnify, four-space gaps).
- `lms runtime select` needs `name[@version]` or `--latest`; a name with several versions
  installed exits 1 ("Please disambiguate by specifying a version").
- Every command takes `--port`: with the host left out it talks to the LM Studio on this box at
  that port with the CLI's own key, which is why only a loopback `url` can be driven by `lms`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jobs.backends import LLAMA_CPP_BACKENDS
from worker.engines.process import ProcessOutcome, run_bounded
from worker.engines.served import LOOPBACK

LOAD_TIMEOUT_S = 1200.0
_CLI_TIMEOUT_S = 120.0
_PS_MAX_ENTRIES = 32  # what `lms ps --json` adds to the result (a box rarely holds more)

# Backend labels and the runtime names that carry them: LM Studio names its llama.cpp builds
# `llama.cpp-<os>-<arch>-<gpu api>-<cpu ext>` (`...-vulkan-avx2`, `...-amd-rocm-avx2`,
# `...-nvidia-cuda12-avx2`, docs: `llama.cpp-mac-arm64-apple-metal-advsimd`) and its MLX
# engine `mlx-llm-...`; a name with no GPU API in it is a CPU build.
_GPU_APIS = ("vulkan", "rocm", "cuda", "metal")


_ESTIMATE_LINE = re.compile(
    r"Estimated (GPU|Total) Memory:\s+([\d.]+) (Bytes|KiB|MiB|GiB|TiB)", re.IGNORECASE
)
_BINARY_UNITS = {"bytes": 0, "kib": 1, "mib": 2, "gib": 3, "tib": 4}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Estimate:
    """LM Studio's own estimate of a load (`lms load --estimate-only`), as it printed it."""

    gpu_bytes: int | None
    total_bytes: int | None
    fits: bool  # "may be loaded" (False: "will fail to load" by the box's guardrails)
    low_confidence: bool
    text: str  # what lms printed, for the evidence

    def as_details(self) -> dict[str, Any]:
        return {"estimated_gpu_bytes": self.gpu_bytes, "estimated_total_bytes": self.total_bytes,
                "passes_guardrails": self.fits, "low_confidence": self.low_confidence,
                "source": "lms load --estimate-only", "printed": self.text}  # fmt: skip


def parse_estimate(printed: str) -> Estimate:
    """`lms load --estimate-only` output (see the module docstring) as numbers and a verdict."""
    text = _ANSI.sub("", printed).strip()
    sizes: dict[str, int] = {}
    for kind, number, unit in _ESTIMATE_LINE.findall(text):
        sizes[kind.lower()] = round(float(number) * 1024 ** _BINARY_UNITS[unit.lower()])
    if "will fail to load" in text:
        fits = False
    elif "may be loaded" in text:
        fits = True
    else:
        raise LmsError(f"`lms load --estimate-only` printed no estimate: {text[-400:]!r}")
    return Estimate(sizes.get("gpu"), sizes.get("total"), fits,
                    "Confidence: LOW" in text, text[-1000:])  # fmt: skip


class LmsError(Exception):
    """`lms` failed, or what it printed is not what its source promises."""


@dataclass(frozen=True)
class Runtime:
    """One row of `lms runtime ls`."""

    name: str
    version: str
    selected: bool
    formats: tuple[str, ...]

    @property
    def spec(self) -> str:
        """`name@version`: what `lms runtime select` takes."""
        return f"{self.name}@{self.version}"


def runtime_backend(name: str) -> str:
    """The backend label a runtime name carries: `vulkan`, `rocm`, `cuda`, `metal`, `mlx`, `cpu`."""
    tokens = name.lower().split("-")
    if tokens[0] == "mlx":
        return "mlx"
    for api in _GPU_APIS:
        if any(token.startswith(api) for token in tokens):  # cuda12, cuda11
            return api
    return "cpu"


def label_matches(label: str, runtime_name: str) -> bool:
    """Whether a job's backend label names this runtime (`metal/mlx` takes either Apple one)."""
    wanted = {part.strip().lower() for part in label.split("/")}
    # Labels that are aliases in the one rule (jobs/backends.py: `hip` is llama.cpp's ROCm)
    # name the same runtime here.
    wanted |= {
        other
        for other, registry in LLAMA_CPP_BACKENDS.items()
        for part in wanted
        if LLAMA_CPP_BACKENDS.get(part) == registry
    }
    return runtime_backend(runtime_name) in wanted


def parse_runtime_table(stdout: str) -> list[Runtime]:
    """`lms runtime ls` output as rows; lines that are not rows (heading, notes) are skipped."""
    rows: list[Runtime] = []
    for line in stdout.splitlines():
        parts = line.replace(",", " ").split()
        if not parts or "@" not in parts[0]:
            continue
        name, _, version = parts[0].rpartition("@")
        selected = "✓" in parts[1:]
        formats = tuple(p for p in parts[1:] if p != "✓")
        if name and version:
            rows.append(Runtime(name, version, selected, formats))
    return rows


def _version_key(version: str) -> tuple[int, ...]:
    # lms's compareVersions takes MAJOR.MINOR.PATCH only; anything else sorts first.
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        return (-1,)
    return tuple(int(p) for p in version.split("."))


def choose_runtime(runtimes: list[Runtime], backend: str, pin: str | None) -> Runtime:
    """The installed runtime a job of `backend` runs on: the owner's pin, else the one runtime
    name carrying the label (its selected version, else its latest)."""
    installed = ", ".join(r.spec for r in runtimes) or "none"
    if pin:
        name, _, version = pin.partition("@")
        fits = [r for r in runtimes if r.name == name and version in ("", r.version)]
        if not fits:
            raise LmsError(
                f"runtime {pin!r} pinned for backend {backend} is not installed (installed: "
                f"{installed}): install it with `lms runtime get`, or fix "
                f"engines.lmstudio.runtimes.{backend} in worker.yaml"
            )
        if not label_matches(backend, name):
            raise LmsError(
                f"runtime {pin!r} is a {runtime_backend(name)} runtime, pinned for backend "
                f"{backend}: fix engines.lmstudio.runtimes.{backend} in worker.yaml"
            )
    else:
        fits = [r for r in runtimes if label_matches(backend, r.name)]
        if not fits:
            raise LmsError(
                f"no LM Studio runtime for backend {backend} is installed (installed: "
                f"{installed}): download one with `lms runtime get`"
            )
        names = sorted({r.name for r in fits})
        if len(names) > 1:
            raise LmsError(
                f"several runtimes fit backend {backend} ({', '.join(names)}): pin one in "
                f"worker.yaml, engines.lmstudio.runtimes.{backend}: <name>@<version>"
            )
    selected = [r for r in fits if r.selected]
    return selected[0] if selected else max(fits, key=lambda r: _version_key(r.version))


def gpu_offload(backend: str, gpu_layers: int | None) -> str:
    """`lms load --gpu` for a job: off for cpu or no layers, max otherwise."""
    if backend == "cpu" or gpu_layers == 0:
        return "off"
    if gpu_layers is None:
        return "max"
    raise LmsError(
        f"gpu_layers {gpu_layers}: LM Studio takes a GPU offload ratio (`lms load --gpu` 0-1, "
        "off or max), not a layer count; leave gpu_layers out of lmstudio jobs, or use 0"
    )


class Lms:
    """The `lms` binary of this box, pointed at the LM Studio that serves `url`."""

    def __init__(self, binary: Path, url: str) -> None:
        parts = urlsplit(url)
        if parts.hostname not in LOOPBACK:
            raise LmsError(
                f"`lms` drives the LM Studio on this box, but url {url} is another host: use a "
                "loopback url with lms, or leave lms out of the backends (REST loading only)"
            )
        self.binary = binary
        self._where = ["--port", str(parts.port or 1234)]

    def _run(self, args: list[str], timeout_s: float = _CLI_TIMEOUT_S) -> ProcessOutcome:
        argv = [str(self.binary), *args, *self._where]
        done = run_bounded(argv, timeout_s)
        if done.timed_out:
            raise LmsError(f"`lms {' '.join(args)}` did not finish in {timeout_s:.0f} s")
        if done.returncode != 0:
            said = done.stderr_tail(8) or done.stdout.strip()[-800:]
            raise LmsError(f"`lms {' '.join(args)}` failed (exit {done.returncode}): {said}")
        return done

    def runtimes(self) -> list[Runtime]:
        return parse_runtime_table(self._run(["runtime", "ls"]).stdout)

    def select(self, runtime: Runtime) -> None:
        self._run(["runtime", "select", runtime.spec])

    def load(self, model: str, context: int, gpu: str, identifier: str) -> float:
        """Load `model` (never prompting: `-y`) and return the command's wall time in s."""
        args = ["load", model, "-y", "--context-length", str(context), "--gpu", gpu,
                "--identifier", identifier]  # fmt: skip
        return self._run(args, LOAD_TIMEOUT_S).wall_s

    def estimate(self, model: str, context: int, gpu: str) -> Estimate:
        """LM Studio's estimate for loading `model` as `load` would; loads nothing."""
        args = ["load", model, "-y", "--context-length", str(context), "--gpu", gpu,
                "--estimate-only"]  # fmt: skip
        done = self._run(args)
        return parse_estimate(done.stderr + "\n" + done.stdout)

    def unload(self, identifier: str) -> None:
        self._run(["unload", identifier])

    def ps(self) -> list[dict[str, Any]]:
        """`lms ps --json`: the loaded instances as LM Studio's SDK describes them."""
        try:
            listed = json.loads(self._run(["ps", "--json"]).stdout or "[]")
        except ValueError as exc:
            raise LmsError(f"`lms ps --json` printed no JSON: {exc}") from None
        if not isinstance(listed, list):
            raise LmsError("`lms ps --json` printed no list")
        return [entry for entry in listed if isinstance(entry, dict)][:_PS_MAX_ENTRIES]
