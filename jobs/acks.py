"""Which results a store has recorded: the acknowledgement both sides of the broker agree on.

A box keeps every result it finished on its own disk (worker/outbox.py) until a store has
recorded it, so a broker that restarts without persistence, or loses its last second of
writes, loses no result: the box publishes again what is no longer in the stream.

The rule, in one place:
- a result is named by `ack_id`, the SHA-1 of its JSON exactly as published (the bytes in the
  stream entry's `result` field); the box puts the same name beside it, in the entry's `ack`
  field, so it can tell later whether the stream still holds that very result;
- a store acknowledges a result once its own SQLite transaction that dealt with the entry has
  committed (recorded it, kept it as unreadable, or found it superseded): it adds the name to
  the sorted set `orch:acked` (score: the store's clock), trimmed to the newest ACKED_MAX;
- one store's acknowledgement suffices: the box then forgets the result. Other stores still
  read it from the stream (kept for the newest 100,000 results), but a store that had not
  read it before the broker lost its data does not get it from the box any more;
- an acknowledgement lost with the broker's data, or trimmed away, costs one more publication
  of a result a store already has; a store treats that copy as the no-op it is
  (jobs/finality.py: equal results, the one kept stays).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from jobs.protocol import BROKER_ID_KEY, RESULTS_KEY, RESULTS_MAXLEN

ACKED_KEY = "orch:acked"  # sorted set: ack_id -> when a store last acknowledged it
# As many as the stream keeps: an acknowledgement outlives its result's stream entry.
ACKED_MAX = RESULTS_MAXLEN
ACK_FIELD = "ack"  # stream entry field: the ack_id of the entry's `result`
_BATCH = 500

# For each (entry id, ack id) pair in ARGV: 1 if the stream still holds that entry with that
# ack field, else 0. Read by the broker itself: an entry's body never leaves it for this.
_IN_STREAM = """
local found = {}
for i = 1, #ARGV, 2 do
  local hit = 0
  local entry = redis.call('xrange', KEYS[1], ARGV[i], ARGV[i])
  if #entry > 0 then
    local fields = entry[1][2]
    for j = 1, #fields, 2 do
      if fields[j] == 'ack' and fields[j + 1] == ARGV[i + 1] then hit = 1 end
    end
  end
  found[#found + 1] = hit
end
return found
"""


def ack_id(body: bytes | str) -> str:
    """The name of a published result: SHA-1 of its JSON as published (not a secret: anyone
    who can write to the broker can acknowledge anything, as they can enqueue anything)."""
    data = body.encode() if isinstance(body, str) else body
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def result_fields(body: bytes | str) -> dict[str, bytes | str]:
    """The fields of the stream entry that publishes `body`."""
    return {"result": body, ACK_FIELD: ack_id(body)}


def xadd_result(client: Any, body: bytes | str) -> Any:
    """Append `body` to the results stream (a client or a pipeline); the entry id it got."""
    return client.xadd(RESULTS_KEY, result_fields(body), maxlen=RESULTS_MAXLEN, approximate=True)


def broker_id(client: Any) -> str:
    """A random id stored in the broker: it changes when the broker loses its data (a cursor,
    or what a box saw, from one broker's data never applies to another's)."""
    client.set(BROKER_ID_KEY, uuid.uuid4().hex, nx=True)
    value = client.get(BROKER_ID_KEY)
    return value.decode() if isinstance(value, bytes) else str(value)


def broker_epoch(client: Any) -> str:
    """Changes whenever the broker may have lost writes: at each server restart (its run id)
    and when its data was wiped while it ran (FLUSHALL takes the broker id with it)."""
    run_id = client.info("server").get("run_id", "")
    return f"{run_id}/{broker_id(client)}"


def acknowledge(client: Any, bodies: Iterable[bytes | str], now: float | None = None) -> int:
    """A store's acknowledgement of results it has committed; returns how many. Scored by the
    broker's clock, so that every store's acknowledgements are trimmed in one order (a store
    whose own clock lags would otherwise see its acknowledgements trimmed first)."""
    if now is None:
        seconds, micros = client.time()
        now = float(seconds) + float(micros) / 1e6
    score = now
    names = {ack_id(body): score for body in bodies}
    if not names:
        return 0
    with client.pipeline(transaction=False) as pipe:
        pipe.zadd(ACKED_KEY, names)
        pipe.zremrangebyrank(ACKED_KEY, 0, -(ACKED_MAX + 1))
        pipe.execute()
    return len(names)


def acknowledged(client: Any, names: Sequence[str]) -> set[str]:
    """Which of `names` (ack ids) a store has acknowledged."""
    found: set[str] = set()
    for start in range(0, len(names), _BATCH):
        chunk = names[start : start + _BATCH]
        with client.pipeline(transaction=False) as pipe:
            for name in chunk:
                pipe.zscore(ACKED_KEY, name)
            scores = pipe.execute()
        found.update(name for name, score in zip(chunk, scores, strict=True) if score is not None)
    return found


def in_stream(client: Any, entries: Sequence[tuple[str, str]]) -> set[str]:
    """Which (entry id, ack id) pairs the stream still holds; returns their entry ids."""
    found: set[str] = set()
    for start in range(0, len(entries), _BATCH):
        chunk = entries[start : start + _BATCH]
        flat = [part for pair in chunk for part in pair]
        hits = client.eval(_IN_STREAM, 1, RESULTS_KEY, *flat)
        found.update(entry for (entry, _name), hit in zip(chunk, hits, strict=True) if int(hit))
    return found
