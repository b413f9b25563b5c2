"""Which of two results of one job is its final result: the rule every reader applies.

Results only move forward. A job can be reported more than once: a re-delivery re-announces its
result, a frozen agent's late run, a retry, a result spooled while the broker was away and
published later. Every store that reads the `orch:results` stream and the worker that marks a
job final (`orch:final:<id>`) keep the result that `supersedes` all others, so stores that read
the same stream in any order converge on the same final result.

The order, highest last:
1. `attempt`: every start of a job counts one (an atomic INCR in the broker), and a retry goes
   on counting from the highest attempt any store has seen (`reset_for_retry`), so a later run
   always has a higher attempt than every earlier one;
2. `lease_generation`: the fencing token of the agent that ran it (worker/lease.py); it only
   decides when attempts tie, which happens only if the broker lost its counters;
3. status: a run that measured beats one that did not (ok, mislabelled, timeout, load failed,
   error, skipped);
4. `finished_at`, the later one.
Two results equal in all four are the same report twice: the one already kept stays.

A result is never eligible when it was made by a box that was not the job's (a copy of the
message that reached another host's queue, refused there by an older worker): a refusal by the
wrong host says nothing about the job.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jobs.protocol import ATTEMPTS_BASE_KEY, ATTEMPTS_KEY, ATTEMPTS_TTL_S, FINAL_KEY
from jobs.result import RunResult, Status

_STATUS_RANK = {
    Status.SKIPPED: 0,
    Status.ERROR: 1,
    Status.LOAD_FAILED: 2,
    Status.TIMEOUT: 3,
    Status.MISLABELLED: 4,
    Status.OK: 5,
}

OrderKey = tuple[int, int, int, datetime]


def order_key(result: RunResult) -> OrderKey:
    """Where `result` stands among its job's results (higher is more final)."""
    generation = result.lease_generation if result.lease_generation is not None else 0
    return (result.attempt, generation, _STATUS_RANK[result.status], result.finished_at)


def eligible(result: RunResult) -> bool:
    """False for a result made by another box than the job's (or for another queue)."""
    job = result.job
    return job is None or (result.host == job.host and result.queue == job.queue)


def supersedes(new: RunResult, old: RunResult | None) -> bool:
    """`new` replaces `old` as its job's final result (None: the job has none yet)."""
    if not eligible(new):
        return False
    if old is None or not eligible(old):
        return True
    return order_key(new) > order_key(old)


# A retry counts on from the highest attempt seen (in the broker, or in the retrying store,
# which has read every result in the stream), so the new run's attempt is above every old
# result's even where the broker's counter expired; deliveries are counted from that base for
# MAX_DELIVERIES. The final mark goes, so that the job runs again.
_RESET_FOR_RETRY = """
local attempts = math.max(tonumber(redis.call('get', KEYS[1]) or '0'), tonumber(ARGV[1]))
redis.call('set', KEYS[1], attempts, 'EX', ARGV[2])
redis.call('set', KEYS[2], attempts, 'EX', ARGV[2])
redis.call('del', KEYS[3])
return attempts
"""


def reset_for_retry(client: Any, job_id: str, last_attempt: int) -> int:
    """Make `job_id` runnable again after `last_attempt`; return the base its next run counts
    from (its attempt will be base + 1)."""
    keys = (
        ATTEMPTS_KEY.format(job_id=job_id),
        ATTEMPTS_BASE_KEY.format(job_id=job_id),
        FINAL_KEY.format(job_id=job_id),
    )
    return int(client.eval(_RESET_FOR_RETRY, 3, *keys, last_attempt, ATTEMPTS_TTL_S))
