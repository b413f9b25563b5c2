"""A store's acknowledgements of the results it has dealt with (the rule: jobs/acks.py).

A box keeps each result it finished until a store acknowledges it. The store does so for a
batch of stream entries right after the SQLite transaction that dealt with them has committed,
never before: a box forgets a result only once it is on a store's disk.

A crash between that commit and the acknowledgement is made good by the next collect: the store
keeps, per broker, how far it has acknowledged (`acked:<broker id>` in `meta`) beside how far
it has read (`cursor:<broker id>`), and first acknowledges the entries between the two, read
again from the stream. A store that predates acknowledgements does the same once for every
entry it had read.

Example (inside `Store.collect`)::

    acks = StoreAcks(store.conn, redis, broker_id)
    acks.catch_up(cursor)
    ...                       # commit a batch of entries
    acks.acknowledge(entries)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from jobs.acks import acknowledge
from jobs.protocol import RESULTS_KEY

_BATCH = 500

Entry = tuple[Any, dict[Any, Any]]  # (entry id, fields) as XRANGE returns them


class StoreAcks:
    """One store's acknowledgements to one broker (its data named by `broker_id`)."""

    def __init__(self, conn: sqlite3.Connection, redis: Any, broker_id: str) -> None:
        self.conn = conn
        self.redis = redis
        self.key = f"acked:{broker_id}"
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (self.key,)).fetchone()
        self.cursor = str(row[0]) if row else "0-0"

    def catch_up(self, read_cursor: str) -> None:
        """Acknowledge the entries this store read (up to `read_cursor`) but did not
        acknowledge yet."""
        while _order(self.cursor) < _order(read_cursor):
            entries = self.redis.xrange(
                RESULTS_KEY, min=f"({self.cursor}", max=read_cursor, count=_BATCH
            )
            if not entries:  # trimmed away since: nothing left to acknowledge
                self._advance(read_cursor)
                return
            self.acknowledge(entries)

    def acknowledge(self, entries: Sequence[Entry]) -> None:
        """Acknowledge `entries`, whose transaction has committed."""
        if not entries:
            return
        acknowledge(self.redis, [_field(fields, "result") for _id, fields in entries])
        self._advance(_text(entries[-1][0]))

    def _advance(self, cursor: str) -> None:
        self.conn.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (self.key, cursor),
        )
        self.cursor = cursor


def _field(fields: dict[Any, Any], name: str) -> bytes | str:
    value = fields.get(name.encode(), fields.get(name, b""))
    return value if isinstance(value, bytes | str) else str(value)


def _order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a comparable pair (an unreadable one sorts first)."""
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
