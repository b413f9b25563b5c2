"""Build llama.cpp's `llama-bench` and `llama-server` on this box, from PyPI.

No prebuilt llama.cpp exists on PyPI for Linux, but the `llama-cpp-python` sdist vendors the
whole llama.cpp source tree (tools included). We fetch that sdist with pip, configure it with
cmake and build only the tools orch drives. The result is cached per (version, backend): a second
call returns at once.

Example::

    built = install_llamacpp(progress=print)
    built.binaries["llama-bench"]  # -> Path(".../llama.cpp/0.3.36-cpu/bin/llama-bench")
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jobs.paths import orch_home
from worker.errors import ProvisionError

# llama-cpp-python release whose vendored llama.cpp we build; bump deliberately (and re-run the
# integration tests): llama-bench's JSON fields and flags move between llama.cpp releases.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
TARGETS = ("llama-bench", "llama-server", "llama-quantize")

# Extra cmake flags per backend. CPU is what every box can build; the others need the vendor SDK
# installed on the box (Vulkan headers + glslc, CUDA toolkit, ROCm/HIP).
BACKEND_FLAGS: dict[str, list[str]] = {
    "cpu": [],
    "vulkan": ["-DGGML_VULKAN=ON"],
    "cuda": ["-DGGML_CUDA=ON"],
    "rocm": ["-DGGML_HIP=ON"],
}

# llama.cpp's AMX path (Intel Xeon 4th gen and later) segfaults in ggml_backend_amx_mul_mat on
# q8_0/q4_K weights in the version above: every run of the tiny models crashed on such a box
# (upstream ggml-org/llama.cpp#20824, open). With `-march=native` the compiler turns AMX on
# wherever the CPU has it, so on x86-64 orch builds without it unless asked (`amx=True`): an
# explicit -mno-* wins over -march=native whatever the order (checked with gcc 12).
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"

_NINJA_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")


@dataclass(frozen=True)
class BuiltEngine:
    """Where a finished build lives and what it was built from."""

    version: str
    backend: str
    prefix: Path
    binaries: dict[str, Path]
    cached: bool


def install_llamacpp(
    backend: str = "cpu",
    *,
    version: str = LLAMA_CPP_PYTHON_VERSION,
    home: Path | None = None,
    jobs: int | None = None,
    extra_cmake_flags: list[str] | None = None,
    amx: bool = False,
    progress: Callable[[str], None] = lambda _line: None,
) -> BuiltEngine:
    """Build (or find cached) llama.cpp tools for `backend`; return their paths.

    A cached build is reused only when it was configured with the same flags: changing them
    (or orch's defaults) builds again.
    """
    if backend not in BACKEND_FLAGS:
        raise ProvisionError(
            f"unknown backend {backend!r}: choose one of {', '.join(sorted(BACKEND_FLAGS))}"
        )
    root = (home or orch_home()) / "llama.cpp"
    prefix = root / f"{version}-{backend}"
    stamp = prefix / "build.json"
    binaries = {name: prefix / "bin" / name for name in TARGETS}
    configure = configure_command(root, version, backend, amx, extra_cmake_flags or [])
    if all(path.is_file() for path in binaries.values()) and _stamped_configure(stamp) == configure:
        return BuiltEngine(version, backend, prefix, binaries, cached=True)

    # cmake/ninja may come from PyPI (the `build` extra) into this venv, which need not be on PATH.
    search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    for tool in ("cmake", "ninja"):
        if shutil.which(tool, path=search_path) is None:
            raise ProvisionError(
                f"`{tool}` is not on PATH: install it (Debian: apt-get install cmake ninja-build; "
                "or pip install 'orch[build]') and run again"
            )
    _fetch_source(root / "src", version, progress)
    build_dir = root / "build" / f"{version}-{backend}"
    progress(f"configuring llama.cpp {version} ({backend})")
    env = {**os.environ, "PATH": search_path}
    _run_logged(configure, build_dir.parent / f"{version}-{backend}.configure.log", progress, env)
    build = [
        "cmake", "--build", str(build_dir), "--target", *TARGETS,
        "-j", str(jobs or os.cpu_count() or 2),
    ]  # fmt: skip
    progress(f"building {', '.join(TARGETS)} (about 5 minutes on 2 cores)")
    _run_logged(build, build_dir.parent / f"{version}-{backend}.build.log", progress, env)

    (prefix / "bin").mkdir(parents=True, exist_ok=True)
    for name, dest in binaries.items():
        # Copied beside, then renamed: a binary a running test or worker executes is replaced,
        # never written over (that fails with ETXTBSY, or would change it under the process).
        partial = dest.with_name(f".{name}.partial")
        shutil.copy2(build_dir / "bin" / name, partial)
        os.replace(partial, dest)
    stamp.write_text(
        json.dumps({"version": version, "backend": backend, "configure": configure}, indent=2)
    )
    return BuiltEngine(version, backend, prefix, binaries, cached=False)


def configure_command(
    root: Path, version: str, backend: str, amx: bool, extra_cmake_flags: list[str]
) -> list[str]:
    """The cmake configure command line for one build (what build.json records)."""
    source = root / "src" / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    return [
        "cmake", "-S", str(source), "-B", str(root / "build" / f"{version}-{backend}"),
        "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
        # The server's web UI would otherwise be downloaded at configure time.
        "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
        *BACKEND_FLAGS[backend], *_amx_flags(amx), *extra_cmake_flags,
    ]  # fmt: skip


def _amx_flags(amx: bool) -> list[str]:
    """cmake flags that keep the compiler from enabling AMX on x86-64 (see NO_AMX_FLAGS).

    Always given, empty where AMX stays: cmake keeps a variable in its cache across configures,
    so leaving it out would keep the flags of a build dir's earlier configure."""
    off = not amx and platform.machine().lower() in ("x86_64", "amd64")
    flags = NO_AMX_FLAGS if off else ""
    return [f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"]


def _stamped_configure(stamp: Path) -> list[str] | None:
    """The cmake command line a cached build was configured with; None if unknown."""
    try:
        configure = json.loads(stamp.read_text()).get("configure")
    except (OSError, ValueError, AttributeError):
        return None
    return configure if isinstance(configure, list) else None


def _fetch_source(src_root: Path, version: str, progress: Callable[[str], None]) -> Path:
    source = src_root / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").is_file():
        return source
    src_root.mkdir(parents=True, exist_ok=True)
    sdist = src_root / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        progress(f"downloading llama-cpp-python=={version} sdist (77 MB) with pip")
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            f"llama-cpp-python=={version}", "-d", str(src_root),
        ]  # fmt: skip
        _run_logged(cmd, src_root / "download.log", progress)
    progress(f"unpacking {sdist.name}")
    with tarfile.open(sdist) as archive:
        archive.extractall(src_root, filter="data")
    if not (source / "CMakeLists.txt").is_file():
        raise ProvisionError(f"{sdist} has no vendor/llama.cpp/CMakeLists.txt")
    return source


def _run_logged(
    argv: list[str],
    log_path: Path,
    progress: Callable[[str], None],
    env: dict[str, str] | None = None,
) -> None:
    """Run a build step, keep its whole output in a log, show ninja's [n/m] lines as progress."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
        )
        assert proc.stdout is not None
        last_pct = -1
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-30:]
            match = _NINJA_PROGRESS.match(line)
            if match:
                pct = 100 * int(match.group(1)) // int(match.group(2))
                if pct // 10 != last_pct // 10:
                    progress(f"  {pct:3d}% [{match.group(1)}/{match.group(2)}]")
                    last_pct = pct
        code = proc.wait()
    if code != 0:
        raise ProvisionError(
            f"`{' '.join(argv[:3])} ...` failed with exit code {code}; full log: {log_path}\n"
            + "\n".join(tail)
        )
