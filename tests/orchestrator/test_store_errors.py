"""A damaged, full, locked or read-only result store: a message naming the file and what to
do, and an exit code; never a raw sqlite3 traceback. A read-only store can still be read."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import storeerrors
from orchestrator.errors import StoreError
from orchestrator.store import Store


def _orch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=120
    )


def _store_with_a_campaign(path: Path) -> None:
    store = Store.open(path)
    store.record_campaign("kept", "m.yaml", "campaign: kept\n" + "# padding\n" * 4000)
    store.close()


def test_a_store_damaged_past_its_header_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    db = tmp_path / "orch.db"
    _store_with_a_campaign(db)
    data = bytearray(db.read_bytes())
    page = 4096
    data[2 * page : len(data)] = b"\xff" * (len(data) - 2 * page)  # the tables' pages
    db.write_bytes(bytes(data))
    done = _orch("--store", str(db), "campaigns")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"the result store {db} is damaged" in done.stderr and "backup" in done.stderr


def test_a_file_that_is_not_a_store_is_a_message(tmp_path: Path) -> None:
    db = tmp_path / "orch.db"
    db.write_bytes(b"\x00garbage" * 1000)
    done = _orch("--store", str(db), "status")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert str(db) in done.stderr


def test_a_full_disk_is_a_store_error_and_nothing_is_half_written(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "orch.db")
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # SQLite's SQLITE_FULL
    with pytest.raises(StoreError, match="no room to write the result store"):
        with store.transaction():
            store.record_campaign("big", "m.yaml", "x" * 200_000)
    assert not store.has_campaign("big")
    store.record_campaign("small", "m.yaml", "")  # the store goes on after the failure
    assert store.has_campaign("small")


def test_a_store_locked_by_another_process_is_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storeerrors, "BUSY_TIMEOUT_S", 0.2)
    db = tmp_path / "orch.db"
    Store.open(db).close()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another orch command writing
    try:
        store = Store.open(db)
        with pytest.raises(StoreError, match="locked by another process"):
            store.record_campaign("c", "m.yaml", "")
    finally:
        other.execute("ROLLBACK")


def _read_only(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`orch ARGS` with `folder` mounted read-only (a private mount namespace: EROFS even for
    root, unlike a chmod)."""
    script = (
        f'mount --bind "{folder}" "{folder}" && mount -o remount,ro,bind "{folder}" "{folder}" '
        '&& exec "$@"'
    )
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", sys.executable, "-m", "orchestrator", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_read_only_store_can_be_read(tmp_path: Path, broker: str) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a folder read-only")
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "orch.db"
    _store_with_a_campaign(db)
    probe = subprocess.run(["unshare", "-m", "mount", "--bind", str(folder), str(folder)],
                           capture_output=True, text=True)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.strip()}")

    listed = _read_only(folder, "--store", str(db), "campaigns")
    assert listed.returncode == 0, listed.stderr
    assert "kept" in listed.stdout
    status = _read_only(folder, "--store", str(db), "status")
    assert status.returncode == 0, status.stderr
    assert "kept" in status.stdout

    # with a broker, status would collect new results into the store: it says why it cannot
    collected = _read_only(folder, "--store", str(db), "status", "--broker", broker)
    assert collected.returncode == 0, collected.stderr
    assert "kept" in collected.stdout and f"{db} is read-only" in collected.stderr
