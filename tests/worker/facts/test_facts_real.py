"""One real detection on the machine running the tests: real /proc, /sys and tools.

Nothing here assumes a GPU; each fact is either present or explained by a note, and facts that
two sources give must agree.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import pytest

from tests.conftest import llama_bin_dir
from worker.facts import detect_host_facts

# Host facts that may be absent on a given box, and must then carry a note saying why.
EXPLAINED_IF_MISSING = (
    "vram_split",
    "gtt_bytes",
    "power_cap_w",
    "platform_profile",
    "vulkan",
    "rocm_version",
    "nvidia",
)


@pytest.mark.skipif(platform.system() != "Linux", reason="reads Linux /proc and /sys")
def test_real_box(tmp_path: Path) -> None:
    binary = llama_bin_dir() / "llama-bench"
    binaries = {"llama-bench/cpu": binary} if binary.is_file() else {}
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(1024))
    facts = detect_host_facts(
        binaries=binaries, models={"tiny": model}, cache_dir=tmp_path / "cache"
    )
    print(facts.model_dump_json(indent=1))

    assert facts.hostname and facts.kernel == platform.release()
    assert facts.os
    assert facts.cpu_threads is not None and facts.cpu_threads >= 1
    assert facts.cpu_cores is None or 1 <= facts.cpu_cores <= facts.cpu_threads
    # MemTotal and sysconf(_SC_PHYS_PAGES) both come from the kernel's totalram_pages.
    assert facts.ram_bytes == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert all(gpu.name for gpu in facts.gpus)
    if not facts.gpus:
        assert any(note.startswith("gpus:") for note in facts.notes)
    for fact in EXPLAINED_IF_MISSING:
        if getattr(facts, fact) is None:
            assert any(note.startswith(f"{fact}:") for note in facts.notes), fact
        else:
            assert fact in facts.sources, fact
    assert facts.models == {"tiny": hashlib.sha256(model.read_bytes()).hexdigest()}
    if binaries:
        assert facts.engines[str(binary)].startswith("version:")
