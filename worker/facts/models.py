"""sha256 of each configured model file, cached so a 20 GB GGUF is read once.

The cache is a JSON file in `cache_dir`, keyed by the resolved path and valid while the file's
size and mtime_ns are unchanged: rewriting a model (a new download, a re-quantisation) changes
at least the mtime, and touching nothing costs one `stat` per model. A file that changes while
it is hashed is not cached. A missing or corrupt cache is rebuilt, never fatal.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.facts._common import FactLog

CACHE_FILE = "model-sha256.json"
# Version of the cache file. A different version is ignored and rebuilt.
# History:
#   1 - first version: path -> size_bytes, mtime_ns, sha256.
CACHE_VERSION = 1

Hasher = Callable[[Path], str]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size_bytes: int
    mtime_ns: int
    sha256: str


class _CacheFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = CACHE_VERSION
    entries: dict[str, _Entry] = Field(default_factory=dict)


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ModelHashCache:
    """The on-disk (path, size, mtime_ns) -> sha256 table, loaded once, saved if it changed."""

    def __init__(self, cache_dir: Path, log: FactLog, hasher: Hasher = sha256_file) -> None:
        self.path = cache_dir / CACHE_FILE
        self._log = log
        self._hasher = hasher
        self._dirty = False
        self._cache = self._load()

    def _load(self) -> _CacheFile:
        try:
            cache = _CacheFile.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return _CacheFile()
        except (OSError, ValidationError) as exc:
            self._log.note(f"models: ignoring unreadable hash cache {self.path}: {exc}")
            return _CacheFile()
        return cache if cache.version == CACHE_VERSION else _CacheFile()

    def sha256(self, path: Path) -> str:
        """The file's sha256, hashing it only when the cache has no entry for its size+mtime."""
        key = str(path.resolve())
        before = path.stat()
        entry = self._cache.entries.get(key)
        if entry and (entry.size_bytes, entry.mtime_ns) == (before.st_size, before.st_mtime_ns):
            return entry.sha256
        digest = self._hasher(path)
        after = path.stat()
        if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
            self._cache.entries[key] = _Entry(
                size_bytes=after.st_size, mtime_ns=after.st_mtime_ns, sha256=digest
            )
            self._dirty = True
        else:
            self._log.note(f"models: {path} changed while it was hashed; not cached")
        return digest

    def save(self) -> None:
        if not self._dirty:
            return
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a second worker on the box never reads half a file.
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".model-sha256.")
            with os.fdopen(fd, "w") as f:
                f.write(self._cache.model_dump_json(indent=1))
            os.replace(tmp, self.path)
        except OSError as exc:
            self._log.note(f"models: cannot save the hash cache {self.path}: {exc}")
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            return
        self._dirty = False


def hash_models(
    models: dict[str, Path], cache_dir: Path, log: FactLog, *, hasher: Hasher = sha256_file
) -> dict[str, str]:
    """model name -> sha256 for every model file that can be read."""
    cache = ModelHashCache(cache_dir, log, hasher)
    digests: dict[str, str] = {}
    for name, path in models.items():
        try:
            digests[name] = cache.sha256(path)
        except OSError as exc:
            log.note(f"models: {name}: cannot hash {path}: {exc.strerror or exc}")
    cache.save()
    return digests
