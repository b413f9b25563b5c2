"""The box's outbox: every finished result stays on its disk until a store has recorded it.

A broker that restarts without persistence (or loses power with `appendfsync everysec`, and
its last second of writes) takes with it the results in its stream that no store had read yet;
their jobs were acknowledged, so nothing would bring them back. So the runner writes each
result here, synced to disk, before it publishes it, and the agent's heartbeat
(`Outbox.sweep`, also at start):
- forgets the results a store acknowledged (jobs/acks.py: one store's acknowledgement does);
  every SWEEP_S, and at once after the broker restarted;
- publishes again those the broker no longer holds, or never got (it was away): whether the
  stream still holds a result is checked entry by entry at start, after every broker restart
  or wipe (`broker_epoch`) and every RECHECK_S (a stream trimmed past it). Publishing again
  goes through the finality order (worker/publish.py), restores the job's final mark (so a
  resubmitted job is not run again), and a store that has the result already keeps its copy.

Files, in a folder of the agent's spool per broker address (`~/.cache/orch/spool/<host>/
outbox-<address>/`, `outbox_folder`: a result kept for one broker is never published into
another, say a test's or a new lab's broker), each a RunResult's JSON exactly as published:
- `<ack id>.json`: not known to be in the broker yet;
- `<ack id>.<stream entry id>.json`: published as that entry, waiting for a store;
- `<job id>.json`: spooled by an older orch while its broker was away (published as the first).

Bounds: MAX_RESULTS files and MAX_BYTES. Above either, the oldest published results are let
go, each with an error in the log: they are then as safe as the broker's copy (as every result
was before the outbox). A result not yet published is never let go; there are only ever a few
(an agent takes no job while its broker is away).

The runner (job thread) and the heartbeat touch the same files: each claims what it works on,
and never touches what the other claimed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jobs.acks import ack_id, acknowledged, broker_epoch, in_stream
from jobs.brokerurl import canonical_url
from worker.publish import parsed, publish

log = logging.getLogger("orch.worker")

MAX_RESULTS = 10_000
MAX_BYTES = 1024**3
# Larger than any result the agent writes (its fields are capped): such a file is not ours.
MAX_RESULT_BYTES = 64 * 1024**2
# How often the heartbeat goes through the outbox (at once after a broker restart or wipe):
# a sweep of 1,000 waiting results took 30-60 ms (a loaded 2-core VM), while the box benchmarks.
SWEEP_S = 30.0
# How often published results are checked against the stream even when the broker did not
# restart (the stream keeps only the newest results).
RECHECK_S = 600.0


def outbox_folder(spool: Path, broker_url: str) -> Path:
    """The outbox of `spool` for the broker at `broker_url`: named by its address (scheme, host,
    port, database), never by its credentials, which may change while the results wait."""
    try:
        parts = urlsplit(canonical_url(broker_url))
        host, port, path = parts.hostname or "", parts.port or "", parts.path
    except ValueError:  # a port that is not a number: the agent fails on it anyway
        host, port, path = "unreadable", "", ""
    address = f"{host}:{port}{path}"
    readable = re.sub(r"[^A-Za-z0-9.]+", "_", f"{host}_{port}{path}")[:60]
    digest = hashlib.sha1(address.encode(), usedforsecurity=False).hexdigest()[:8]
    return spool / f"outbox-{readable}-{digest}"


def adopt_old_files(spool: Path, folder: Path) -> int:
    """Move results an older orch spooled in `spool` itself (`<job id>.json`, kept while its
    broker was away) into `folder`, to be published with the rest; return how many."""
    moved = 0
    for path in spool.glob("*.json") if spool.is_dir() else []:
        if _OLD_NAME.match(path.name):
            folder.mkdir(parents=True, exist_ok=True)
            os.replace(path, folder / path.name)
            moved += 1
    return moved


_OLD_NAME = re.compile(r"^[0-9a-f]{16}\.json$")
_NAME = re.compile(r"^(?P<ack>[0-9a-f]{40})(?:\.(?P<entry>\d{1,20}-\d{1,20}))?\.json$")

_claims_lock = threading.Lock()
_claimed: set[Path] = set()


@dataclass(frozen=True)
class Entry:
    """One result in the outbox."""

    path: Path
    ack: str
    entry_id: str | None  # its stream entry, once published

    def order(self) -> tuple[int, int]:
        """Publication order (entry ids are a broker clock and a sequence number)."""
        ms, _, seq = (self.entry_id or "0-0").partition("-")
        return int(ms), int(seq)


class Outbox:
    """The results of one box not yet acknowledged by a store (see the module docstring)."""

    def __init__(
        self, folder: Path, max_results: int | None = None, max_bytes: int | None = None
    ) -> None:
        self.folder = folder
        self.max_results = MAX_RESULTS if max_results is None else max_results
        self.max_bytes = MAX_BYTES if max_bytes is None else max_bytes
        self._epoch: str | None = None  # the broker epoch of the last full check
        self._checked_at = 0.0
        self._swept_at = 0.0

    # -- the runner's side -------------------------------------------------------------------

    def keep(self, body: str) -> Entry:
        """Write `body` to disk, synced, before it is published; the caller holds it until it
        calls `sent`, `drop` or `release`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = ack_id(body)
        entry = Entry(self.folder / f"{name}.json", name, None)
        _claim(entry.path)
        try:
            _write_durably(entry.path, body.encode())
        except BaseException:
            _release(entry.path)
            raise
        self._bound()
        return entry

    def sent(self, entry: Entry, entry_id: str) -> Entry:
        """`entry` is in the stream as `entry_id`: keep it, under that name, for the sweep."""
        published = Entry(self.folder / f"{entry.ack}.{entry_id}.json", entry.ack, entry_id)
        if published.path != entry.path:
            # Not synced: if the rename is lost, the result is published once more.
            os.replace(entry.path, published.path)
        _release(entry.path)
        return published

    def drop(self, entry: Entry) -> None:
        entry.path.unlink(missing_ok=True)
        _release(entry.path)

    @staticmethod
    def release(entry: Entry) -> None:
        _release(entry.path)

    # -- the heartbeat's side ----------------------------------------------------------------

    def sweep(self, redis: Any) -> int:
        """Forget what a store acknowledged, publish again what the broker does not hold;
        return how many results were published. Does nothing until SWEEP_S after the last
        sweep, unless the broker restarted or was wiped since."""
        if not self.folder.is_dir():
            return 0
        epoch = broker_epoch(redis)  # before the check: a restart during it is seen next
        if epoch == self._epoch and time.monotonic() - self._swept_at < SWEEP_S:
            return 0
        self._swept_at = time.monotonic()
        with self._claim_all() as entries:
            if not entries:
                return 0
            acked = acknowledged(redis, [e.ack for e in entries])
            for entry in entries:
                if entry.ack in acked:
                    self.drop(entry)
            left = [e for e in entries if e.ack not in acked]
            check = epoch != self._epoch or time.monotonic() - self._checked_at > RECHECK_S
            published = [e for e in left if e.entry_id is not None]
            if check:
                held = in_stream(redis, [(e.entry_id, e.ack) for e in published if e.entry_id])
            else:
                held = {e.entry_id for e in published if e.entry_id}
            lost = [e for e in left if e.entry_id is not None and e.entry_id not in held]
            if lost:
                log.warning("%d result(s) kept in %s are no longer in the broker's stream and "
                            "no store has recorded them (the broker lost them): publishing them "
                            "again", len(lost), self.folder)  # fmt: skip
            sent = sum(self._publish_again(redis, e) for e in left if e.entry_id not in held)
            if check:
                self._epoch, self._checked_at = epoch, time.monotonic()
        return sent

    def _publish_again(self, redis: Any, entry: Entry) -> int:
        body = self._read(entry)
        result = parsed(body) if body is not None and ack_id(body) == entry.ack else None
        if body is None or result is None:  # not what the agent wrote there
            bad = entry.path.with_suffix(".bad")
            os.replace(entry.path, bad)
            _release(entry.path)
            log.error("spooled result %s is unreadable: kept as %s", entry.path, bad.name)
            return 0
        entry_id = publish(redis, result, body, None)
        if entry_id is None:
            log.info("job %s already has a later result, or was retried since: its spooled "
                     "one is dropped", result.job_id)  # fmt: skip
            self.drop(entry)
            return 0
        self.sent(entry, entry_id)
        return 1

    @staticmethod
    def _read(entry: Entry) -> str | None:
        try:
            if entry.path.stat().st_size > MAX_RESULT_BYTES:
                return None
            return entry.path.read_bytes().decode()
        except (OSError, UnicodeDecodeError):
            return None

    @contextmanager
    def _claim_all(self) -> Iterator[list[Entry]]:
        """Every entry nobody else holds now, held until the block ends."""
        entries: list[Entry] = []
        try:
            with _claims_lock:
                for path in sorted(self.folder.glob("*.json*")) if self.folder.is_dir() else []:
                    if path in _claimed:
                        continue
                    if path.name.endswith(".json.tmp"):
                        if path.with_suffix("") not in _claimed:  # left by a crash mid-write
                            path.unlink(missing_ok=True)
                        continue
                    entry = _entry(path) or _adopt_legacy(path)
                    if entry is not None and entry.path not in _claimed:
                        _claimed.add(entry.path)
                        entries.append(entry)
            yield entries
        finally:
            for entry in entries:
                _release(entry.path)

    def _bound(self) -> None:
        """Let the oldest published results go while the outbox is over its bounds."""
        entries = [e for p in self.folder.glob("*.json") if (e := _entry(p)) is not None]
        sizes = {e.path: _size(e.path) for e in entries}
        count, total = len(entries), sum(sizes.values())
        if count <= self.max_results and total <= self.max_bytes:
            return
        with _claims_lock:
            for entry in sorted((e for e in entries if e.entry_id), key=Entry.order):
                if count <= self.max_results and total <= self.max_bytes:
                    return
                if entry.path in _claimed:
                    continue
                entry.path.unlink(missing_ok=True)
                count, total = count - 1, total - sizes[entry.path]
                log.error(
                    "the spool %s is full (%d results, at most %d, and %d bytes, at most %d): "
                    "let go of %s, published but not yet recorded by any store: it is now only "
                    "in the broker", self.folder, count + 1, self.max_results,
                    total + sizes[entry.path], self.max_bytes, entry.path.name,
                )  # fmt: skip
        log.error("the spool %s is over its bounds with results not yet published: kept",
                  self.folder)  # fmt: skip


def _entry(path: Path) -> Entry | None:
    match = _NAME.match(path.name)
    if not match:
        return None
    if match["entry"] is not None:
        # A stream entry id is two 64-bit numbers: a larger one (a planted name) would make the
        # broker's check fail for the whole sweep. Not ours: left alone.
        if any(int(part) >= 2**64 for part in match["entry"].split("-")):
            return None
    return Entry(path, match["ack"], match["entry"])


def _adopt_legacy(path: Path) -> Entry | None:
    """A result spooled by an older orch (`<job id>.json`): renamed as a new one."""
    if not path.name.endswith(".json"):
        return None
    try:
        body = path.read_bytes() if _size(path) <= MAX_RESULT_BYTES else b""
    except OSError:
        return None
    entry = Entry(path.with_name(f"{ack_id(body)}.json"), ack_id(body), None)
    try:
        os.replace(path, entry.path if body else path.with_suffix(".bad"))
    except OSError as exc:  # its name taken by something else: left for a person to see
        log.error("spooled result %s could not be renamed: %s", path, exc)
        return None
    if not body:
        log.error("spooled result %s is unreadable: kept as %s.bad", path, path.stem)
        return None
    return entry


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _claim(path: Path) -> None:
    with _claims_lock:
        _claimed.add(path)


def _release(path: Path) -> None:
    with _claims_lock:
        _claimed.discard(path)


def _write_durably(path: Path, data: bytes) -> None:
    """Write, sync, rename into place, sync the folder: on disk whatever happens next."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    if os.name == "posix":  # a folder cannot be opened for syncing on Windows
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
