"""The dead-letter list seen from the coordinator: count, list and purge (`orch dlq ...`).

Entries are written by both sides through jobs/deadletter.py; this module only reads and
removes them. An entry that is itself unreadable (someone wrote junk into the list) is shown
as such, never a traceback.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from tabulate import tabulate

from jobs.deadletter import DEAD_LETTER_KEY, DeadLetter


def dead_letter_count(client: Any) -> int:
    return int(client.llen(DEAD_LETTER_KEY))


def list_dead_letters(client: Any, limit: int = 50) -> list[DeadLetter]:
    """The newest `limit` entries, newest first."""
    entries = []
    for raw in client.lrange(DEAD_LETTER_KEY, 0, max(limit, 1) - 1):
        try:
            entries.append(DeadLetter.model_validate_json(raw))
        except ValidationError:
            text = raw[:200].decode(errors="replace")
            entries.append(
                DeadLetter(queue="?", reason="unreadable dead-letter entry", at=0.0, source="?",
                           size_bytes=len(raw), raw=text, truncated=len(raw) > 200)
            )  # fmt: skip
    return entries


def purge_dead_letters(client: Any) -> int:
    """Drop every entry; how many there were."""
    pipe = client.pipeline(transaction=True)
    pipe.llen(DEAD_LETTER_KEY)
    pipe.delete(DEAD_LETTER_KEY)
    count, _deleted = pipe.execute()
    return int(count)


def render_dead_letters(entries: list[DeadLetter], total: int, as_json: bool = False) -> str:
    if as_json:
        return json.dumps([e.model_dump() for e in entries], indent=1)
    if not entries:
        return "no dead letters"
    rows = [
        [_when(e.at), e.queue, e.source, e.reason, f"{e.size_bytes} B", _preview(e)]
        for e in entries
    ]
    table = tabulate(rows, ["when (UTC)", "queue", "moved by", "reason", "size", "message starts"],
                     tablefmt="simple", disable_numparse=True)  # fmt: skip
    more = f"\n({total - len(entries)} older not shown: --limit)" if total > len(entries) else ""
    return table + more


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "?"


def _preview(entry: DeadLetter, chars: int = 60) -> str:
    text = entry.raw.replace("\n", " ").replace("\r", " ")
    printable = "".join(c if c.isprintable() else "?" for c in text[:chars])
    return printable + ("..." if len(text) > chars or entry.truncated else "")
