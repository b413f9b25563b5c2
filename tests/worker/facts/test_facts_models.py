"""Model sha256: hashed once, then answered from the (path, size, mtime_ns) cache."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from facts_fakes import FIXTURES, FakeTools, box_root

from worker.facts import detect_host_facts
from worker.facts._common import FactLog
from worker.facts.models import CACHE_FILE, hash_models, sha256_file


def test_second_call_does_not_read_the_file(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" * 1000)
    reads: list[Path] = []

    def counting(path: Path) -> str:
        reads.append(path)
        return sha256_file(path)

    first = hash_models({"m": model}, tmp_path / "cache", FactLog(), hasher=counting)
    second = hash_models({"m": model}, tmp_path / "cache", FactLog(), hasher=counting)
    assert first == second == {"m": hashlib.sha256(model.read_bytes()).hexdigest()}
    assert reads == [model]
    entry = json.loads((tmp_path / "cache" / CACHE_FILE).read_text())["entries"]
    assert entry[str(model.resolve())]["size_bytes"] == 4000


def test_cache_trusts_size_and_mtime_and_rehashes_when_they_change(tmp_path: Path) -> None:
    """Proof without a counter: new bytes behind the same size and mtime keep the old hash."""
    model = tmp_path / "m.gguf"
    model.write_bytes(b"A" * 4096)
    old = hashlib.sha256(b"A" * 4096).hexdigest()
    tools = FakeTools(FIXTURES / "no-gpu" / "tools")

    def detect() -> dict[str, str]:
        return detect_host_facts(
            box_root("no-gpu"),
            binaries={},
            models={"m": model},
            cache_dir=tmp_path / "cache",
            which=tools.which,
            run=tools.run,
        ).models

    assert detect() == {"m": old}
    stat = model.stat()
    model.write_bytes(b"B" * 4096)
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert detect() == {"m": old}  # not re-read
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert detect() == {"m": hashlib.sha256(b"B" * 4096).hexdigest()}


def test_second_call_is_much_faster(tmp_path: Path) -> None:
    model = tmp_path / "big.gguf"
    with model.open("wb") as f:
        f.truncate(256 * 1024**2)  # sparse, but every byte is still read and hashed
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        hash_models({"big": model}, tmp_path / "cache", FactLog())
        timings.append(time.perf_counter() - start)
    first_s, second_s = timings
    print(f"256 MiB model: first call {first_s * 1000:.1f} ms, second {second_s * 1000:.2f} ms")
    assert second_s < first_s / 10


def test_missing_model_and_corrupt_cache_are_notes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / CACHE_FILE).write_text("{not json")
    good = tmp_path / "good.gguf"
    good.write_bytes(b"GGUF")
    log = FactLog()
    digests = hash_models({"good": good, "gone": tmp_path / "gone.gguf"}, cache, log)
    assert digests == {"good": hashlib.sha256(b"GGUF").hexdigest()}
    assert log.notes[0].startswith(f"models: ignoring unreadable hash cache {cache / CACHE_FILE}")
    assert log.notes[1] == (
        f"models: gone: cannot hash {tmp_path / 'gone.gguf'}: No such file or directory"
    )
    assert json.loads((cache / CACHE_FILE).read_text())["version"] == 1  # rebuilt
