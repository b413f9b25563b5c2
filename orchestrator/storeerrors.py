"""What the result store says when SQLite fails: a StoreError naming the file and what to do,
never a raw sqlite3 traceback.

Every statement of the store goes through `StoreConnection` / `StoreCursor`, which turn a
sqlite3.Error (corrupt file, disk full, locked, read-only) into a StoreError, so store.py's
queries stay plain SQL. `open_read_only` opens a store on a read-only file or folder (a copy,
a backup, a read-only mount) for the commands that only read it (report, status).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.errors import StoreError

# Seconds a statement waits for another process's write lock before it gives up.
BUSY_TIMEOUT_S = 30.0


def explain(path: Path | str, exc: sqlite3.Error) -> str:
    """The user's message for `exc`, by SQLite's error code (its text as a fallback)."""
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc)
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in text \
            or "not a database" in text:  # fmt: skip
        return (
            f"the result store {path} is damaged ({text}): move it away and restore a backup "
            "(or start a new store with --store; `sqlite3 FILE .recover` may save its rows)"
        )
    if code == sqlite3.SQLITE_FULL or "disk is full" in text:
        return (
            f"no room to write the result store {path} ({text}): free disk space and run the "
            "command again (SQLite rolled back the half-written change)"
        )
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text:
        return (
            f"the result store {path} stayed locked by another process for "
            f"{BUSY_TIMEOUT_S:g} s ({text}): wait for the other orch command, or stop it"
        )
    if code == sqlite3.SQLITE_READONLY or "readonly" in text or "read-only" in text:
        return (
            f"the result store {path} is read-only ({text}): `orch report` and `orch status` "
            "can read it; commands that record results need write access"
        )
    if code == sqlite3.SQLITE_CANTOPEN or "unable to open" in text:
        return f"cannot open the result store {path} ({text}): check the path and permissions"
    return f"the result store {path} failed: {text}"


@contextmanager
def _translated(path: Path | str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(explain(path, exc)) from exc


class StoreCursor(sqlite3.Cursor):
    """A cursor whose every step raises StoreError instead of sqlite3.Error."""

    def _path(self) -> str:
        return str(getattr(self.connection, "store_path", "?"))

    def execute(self, sql: str, parameters: Any = (), /) -> StoreCursor:
        with _translated(self._path()):
            super().execute(sql, parameters)
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> StoreCursor:
        with _translated(self._path()):
            super().executemany(sql, seq_of_parameters)
        return self

    def executescript(self, sql_script: str, /) -> StoreCursor:
        with _translated(self._path()):
            super().executescript(sql_script)
        return self

    def fetchone(self) -> Any:
        with _translated(self._path()):
            return super().fetchone()

    def fetchmany(self, size: int | None = 1) -> list[Any]:
        with _translated(self._path()):
            return super().fetchmany(size)

    def fetchall(self) -> list[Any]:
        with _translated(self._path()):
            return super().fetchall()

    def __next__(self) -> Any:
        with _translated(self._path()):
            return super().__next__()


class StoreConnection(sqlite3.Connection):
    """A connection whose statements run on StoreCursors (`Connection.execute` would make a
    plain cursor in C, whose errors would escape untranslated)."""

    store_path: str = "?"

    def cursor(self, factory: Any = None) -> Any:  # noqa: D102
        return super().cursor(factory or StoreCursor)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any:
        return self.cursor().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> Any:
        return self.cursor().executescript(sql_script)


def connect_store(path: Path) -> StoreConnection:
    """The store's read-write connection (autocommit; store.py opens its transactions)."""
    with _translated(path):
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, factory=StoreConnection
        )
    conn.store_path = str(path)
    return conn


def open_read_only(path: Path) -> StoreConnection:
    """A connection that only reads `path`: `mode=ro`, else (a read-only folder, where SQLite
    cannot make the WAL's shared-memory file) `immutable=1`, which reads the file as it is."""
    uri = path.resolve().as_uri()
    failure: sqlite3.Error | None = None
    for flags in ("mode=ro", "mode=ro&immutable=1"):
        try:
            conn = sqlite3.connect(
                f"{uri}?{flags}", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                factory=StoreConnection,
            )  # fmt: skip
            conn.store_path = str(path)
            conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            return conn
        except (sqlite3.Error, StoreError) as exc:
            cause = exc.__cause__ if isinstance(exc, StoreError) else exc
            failure = cause if isinstance(cause, sqlite3.Error) else failure
            if "damaged" in str(exc):
                raise
    raise StoreError(explain(path, failure or sqlite3.OperationalError("unable to open")))
