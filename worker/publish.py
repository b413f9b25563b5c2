"""Announce a finished result in the broker, only forward (jobs/finality.py), and only while
the agent holds its box's lease.

One transaction appends the result to the `orch:results` stream (with its ack id: jobs/acks.py)
and marks it the job's final result (`orch:final:<id>`), so a redelivered job is not run again.
A result of an attempt that an `orch retry` came after (its attempt is at most the base the
retry set, jobs/finality.py reset_for_retry) is never published: the retry took its final mark
away so that the job runs again, and a copy from the box's outbox must not put it back.
"""

from __future__ import annotations

from typing import Any

import redis as redis_lib
from pydantic import ValidationError

from jobs.acks import xadd_result
from jobs.finality import supersedes
from jobs.protocol import ATTEMPTS_BASE_KEY, FINAL_KEY
from jobs.result import RunResult
from worker.lease import Lease, LeaseLost


def publish(redis: Any, result: RunResult, body: str, lease: Lease | None) -> str | None:
    """Announce `result` (`body` is its JSON) and mark it final, atomically; return its stream
    entry id, or None when another result of the job supersedes it (nothing published).

    The final mark being this very result (an earlier publication of it) publishes it again:
    the stream may have lost the first one, and stores ignore the copy. LeaseLost if `lease`
    (None: no lease to check, for a result made under the lease of its time) is gone.
    """
    final_key = FINAL_KEY.format(job_id=result.job_id)
    base_key = ATTEMPTS_BASE_KEY.format(job_id=result.job_id)
    if lease is not None and not lease.keep(redis):
        raise LeaseLost(f"result of {result.job_id} refused: the {lease.host} lease is not ours")
    with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                # Watched: a change of either between the checks and EXEC aborts the EXEC.
                pipe.watch(final_key, base_key, *([lease.key] if lease is not None else []))
                if lease is not None and _text(pipe.get(lease.key)) != lease.value:
                    raise LeaseLost(
                        f"result of {result.job_id} refused: the {lease.host} lease is not ours"
                    )
                if _retried_since(result, pipe.get(base_key)):
                    return None
                old = pipe.get(final_key)
                if old is not None and _text(old) != body and not supersedes(result, parsed(old)):
                    return None
                pipe.multi()
                xadd_result(pipe, body)
                pipe.set(final_key, body)
                entry_id, _ok = pipe.execute()
                return str(_text(entry_id))
            except redis_lib.WatchError:
                continue


def parsed(body: bytes | str) -> RunResult | None:
    """The RunResult in `body`, or None when it is not one (an unreadable final mark, say)."""
    try:
        return RunResult.model_validate_json(body)
    except ValidationError:
        return None


def _retried_since(result: RunResult, base: bytes | str | None) -> bool:
    """An `orch retry` came after `result`'s attempt (`base`: the attempt it counts on from)."""
    try:
        return base is not None and result.attempt <= int(base)
    except ValueError:
        return False


def _text(value: bytes | str | None) -> str | None:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
