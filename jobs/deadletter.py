"""The dead-letter list: where a queued message that must not run goes, with the reason.

Both sides move messages here: the agent when it pops one that `jobs.protocol.check_message`
refuses, the coordinator when it meets one while reading the queues (`orch status`, `submit`,
`cancel`). Nothing here runs again by itself; `orch dlq list` shows the entries and `orch dlq
purge` drops them.

`orch:dead-letters` is a Redis list, newest first, trimmed to DEAD_LETTER_MAXLEN entries, each a
DeadLetter as JSON holding at most DEAD_LETTER_RAW_CHARS characters of the message, so junk
pushed in a loop cannot fill the broker's memory.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict

DEAD_LETTER_KEY = "orch:dead-letters"
DEAD_LETTER_MAXLEN = 1000
DEAD_LETTER_RAW_CHARS = 4096
UNACKED_KEY = "unacked"  # kombu's Redis transport: delivered, unacknowledged messages
UNACKED_INDEX_KEY = "unacked_index"

# Take `raw` out of list KEYS[1] and dead-letter it, in one step: if an agent popped it
# meanwhile, nothing moves (it dead-letters its copy itself).
_MOVE_FROM_LIST = """
if redis.call('lrem', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('lpush', KEYS[2], ARGV[2])
  redis.call('ltrim', KEYS[2], 0, tonumber(ARGV[3]) - 1)
  return 1
end
return 0
"""
_MOVE_FROM_UNACKED = """
if redis.call('hget', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('hdel', KEYS[1], ARGV[1])
  redis.call('zrem', KEYS[2], ARGV[1])
  redis.call('lpush', KEYS[3], ARGV[3])
  redis.call('ltrim', KEYS[3], 0, tonumber(ARGV[4]) - 1)
  return 1
end
return 0
"""


class DeadLetter(BaseModel):
    """One refused message: where it was, why, when (unix time, seconds), and its start."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    queue: str
    reason: str
    at: float
    source: str  # who moved it: "worker <host>" or "coordinator"
    size_bytes: int
    raw: str  # the message's first DEAD_LETTER_RAW_CHARS characters (undecodable bytes as U+FFFD)
    truncated: bool


def dead_letter_entry(raw: bytes | str, queue: str, reason: str, source: str) -> str:
    """The JSON entry for one message, bounded whatever the message's size."""
    data = raw if isinstance(raw, bytes) else raw.encode(errors="replace")
    head = data[: DEAD_LETTER_RAW_CHARS * 4].decode(errors="replace")[:DEAD_LETTER_RAW_CHARS]
    return DeadLetter(
        queue=queue[:300],
        reason=reason[:1000],
        at=time.time(),
        source=source,
        size_bytes=len(data),
        raw=head,
        truncated=len(head.encode()) < len(data),
    ).model_dump_json()


def push_dead_letter(client: Any, raw: bytes | str, queue: str, reason: str, source: str) -> None:
    """Dead-letter a message already taken off its queue (the agent popped it)."""
    pipe = client.pipeline(transaction=True)
    pipe.lpush(DEAD_LETTER_KEY, dead_letter_entry(raw, queue, reason, source))
    pipe.ltrim(DEAD_LETTER_KEY, 0, DEAD_LETTER_MAXLEN - 1)
    pipe.execute()


def move_from_list(client: Any, key: str | bytes, raw: bytes, reason: str, source: str) -> bool:
    """Move one waiting message from list `key` to the dead letters; False if it was gone."""
    entry = dead_letter_entry(raw, _text(key), reason, source)
    moved = client.eval(_MOVE_FROM_LIST, 2, key, DEAD_LETTER_KEY, raw, entry, DEAD_LETTER_MAXLEN)
    return bool(moved)


def move_from_unacked(client: Any, tag: str | bytes, raw: bytes, reason: str, source: str) -> bool:
    """Move one entry of kombu's `unacked` hash (unchanged since read) to the dead letters."""
    entry = dead_letter_entry(raw, UNACKED_KEY, reason, source)
    moved = client.eval(
        _MOVE_FROM_UNACKED, 3, UNACKED_KEY, UNACKED_INDEX_KEY, DEAD_LETTER_KEY,
        tag, raw, entry, DEAD_LETTER_MAXLEN,
    )  # fmt: skip
    return bool(moved)


def _text(key: str | bytes) -> str:
    return key.decode(errors="replace") if isinstance(key, bytes) else key
