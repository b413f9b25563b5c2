"""The box's lease, with a fencing token: at most one benchmark at a time per box.

An agent owns its box while it holds `orch:lease:<host>` (a key with a TTL, renewed by its
heartbeat). Every acquisition takes the next generation from `orch:lease-generation:<host>`
in the same Lua script, and records who took it (pid, boot id and start time) in
`orch:lease-holders:<host>`. Then:
- a job starts only through `start_attempt`, which checks in one script that the lease is still
  this agent's and counts the attempt: an agent that lost its lease (frozen, cut off) cannot
  start a job;
- every result carries the generation, and the worker publishes one only while it still holds
  the lease and only if it supersedes the job's final result (jobs/finality.py): a frozen
  agent's late result never replaces a newer one;
- a new agent that took an expired lease neither runs nor re-queues anything while an earlier
  holder's process still lives on this boot of this box (`live_predecessors`): a frozen agent's
  engine may still be running, and its job is still its own.

The limit: a holder recorded under another boot id is taken for dead once its lease expired.
That is right for an agent that ran before this box rebooted; it is wrong for an agent of the
same host name on another machine frozen longer than the lease (a misconfiguration): its job
may then run again here while it finishes there. Its late result is still refused, and the two
runs were on different machines, not one box.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from jobs.process import boot_id, process_token, same_process
from jobs.protocol import (
    ATTEMPTS_BASE_KEY,
    ATTEMPTS_KEY,
    ATTEMPTS_TTL_S,
    HEARTBEAT_INTERVAL_S,
    LEASE_GENERATION_KEY,
    LEASE_HOLDERS_KEY,
    LEASE_KEY,
    LEASE_TTL_S,
)
from worker.errors import ConfigError

log = logging.getLogger("orch.worker")

# Tests (and very slow links) shorten or lengthen the lease; the heartbeat follows it.
LEASE_TTL_ENV = "ORCH_LEASE_TTL_S"
_MIN_TTL_S = 2

_ACQUIRE = """
if redis.call('exists', KEYS[1]) == 1 then return {0, redis.call('get', KEYS[1])} end
local generation = redis.call('incr', KEYS[2])
local value = '{"generation": ' .. generation .. ', ' .. string.sub(ARGV[1], 2)
redis.call('set', KEYS[1], value, 'EX', ARGV[2])
redis.call('hset', KEYS[3], generation, value)
return {generation, value}
"""
# Renew; or take back a lease that lapsed (broker restart, network cut) when nobody took it
# since, i.e. the generation counter has not moved past ours (or was lost with the data).
_KEEP = """
local current = redis.call('get', KEYS[1])
if current == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
if current then return 0 end
if tonumber(redis.call('get', KEYS[2]) or '0') > tonumber(ARGV[3]) then return 0 end
redis.call('set', KEYS[2], ARGV[3])
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('hset', KEYS[3], ARGV[3], ARGV[1])
return 2
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
redis.call('hdel', KEYS[2], ARGV[2])
return 1
"""
# The start of a job: still the lease holder (ARGV[3] == '0': no agent, nothing to check), then
# one more attempt; returns {attempt, deliveries since the last retry}, or {-1, 0} if not ours.
_START = """
if ARGV[3] == '1' and redis.call('get', KEYS[1]) ~= ARGV[1] then return {-1, 0} end
local attempt = redis.call('incr', KEYS[2])
redis.call('expire', KEYS[2], ARGV[2])
return {attempt, attempt - tonumber(redis.call('get', KEYS[3]) or '0')}
"""


class LeaseLost(Exception):
    """This agent no longer holds its box's lease: it must not start or publish anything."""


def lease_ttl_s() -> int:
    """The lease's time to live: LEASE_TTL_S, or `$ORCH_LEASE_TTL_S` (at least 2 s)."""
    text = os.environ.get(LEASE_TTL_ENV)
    if not text:
        return LEASE_TTL_S
    try:
        ttl = int(text)
    except ValueError:
        raise ConfigError(f"{LEASE_TTL_ENV}={text!r} is not a whole number of seconds") from None
    if ttl < _MIN_TTL_S:
        raise ConfigError(f"{LEASE_TTL_ENV}={ttl}: the lease needs at least {_MIN_TTL_S} s")
    return ttl


@dataclass(frozen=True)
class Holder:
    """An agent that took a box's lease, as recorded when it did."""

    generation: int
    pid: int
    boot: str
    process: str  # jobs.process.process_token
    machine: str  # socket.gethostname(), for messages

    @classmethod
    def parse(cls, value: bytes | str) -> Holder | None:
        try:
            data = json.loads(value)
            return cls(int(data["generation"]), int(data["pid"]), str(data.get("boot", "")),
                       str(data.get("process", "")), str(data.get("machine", "")))  # fmt: skip
        except (ValueError, TypeError, KeyError):
            return None

    def may_run_here(self) -> bool:
        """It may still run on this box: same boot, and its process is alive (not a reuse)."""
        return self.boot == boot_id() and same_process(self.pid, self.process)


class Lease:
    """One agent's hold on one box (see the module docstring for what it guarantees)."""

    def __init__(self, host: str, ttl_s: int | None = None) -> None:
        self.host = host
        self.ttl_s = ttl_s if ttl_s is not None else lease_ttl_s()
        self.key = LEASE_KEY.format(host=host)
        self._keys = (self.key, LEASE_GENERATION_KEY.format(host=host),
                      LEASE_HOLDERS_KEY.format(host=host))  # fmt: skip
        self.instance = uuid.uuid4().hex
        self.generation = 0  # 0: not held yet
        self.value = ""

    @property
    def heartbeat_s(self) -> float:
        """How often to renew: three chances before the lease lapses."""
        return min(HEARTBEAT_INTERVAL_S, self.ttl_s / 3)

    def acquire(self, redis: Any) -> str | None:
        """Take the lease if it is free; else return the holder's value."""
        pid = os.getpid()
        owner = json.dumps(
            {"instance": self.instance, "pid": pid, "boot": boot_id(),
             "process": process_token(pid), "machine": socket.gethostname()}
        )  # fmt: skip
        generation, value = redis.eval(_ACQUIRE, 3, *self._keys, owner, self.ttl_s)
        text = value.decode() if isinstance(value, bytes) else str(value)
        if not generation:
            return text
        self.generation, self.value = int(generation), text
        log.info("took the lease on %s (generation %d)", self.host, self.generation)
        return None

    def keep(self, redis: Any) -> bool:
        """Renew the lease; take it back if it lapsed and nobody took it since. False: lost
        (or never held)."""
        if not self.generation:
            return False
        kept = redis.eval(_KEEP, 3, *self._keys, self.value, self.ttl_s, self.generation)
        if kept == 2:
            log.warning("the lease on %s had lapsed; took it back", self.key)
        return bool(kept)

    def release(self, redis: Any) -> None:
        if self.value:
            redis.eval(_RELEASE, 2, self.key, self._keys[2], self.value, self.generation)

    def live_predecessors(self, redis: Any) -> list[Holder]:
        """Earlier holders that may still run on this box; the others are forgotten."""
        alive = []
        for generation, value in redis.hgetall(self._keys[2]).items():
            if int(generation) == self.generation:
                continue
            holder = Holder.parse(value)
            if holder is not None and holder.may_run_here():
                alive.append(holder)
            else:
                redis.hdel(self._keys[2], generation)
        return alive


def start_attempt(redis: Any, job_id: str, host: str, lease: Lease | None) -> tuple[int, int]:
    """Count one more start of `job_id`: (attempt, deliveries since its last retry).

    With a `lease`, only while it still holds it (one script: no start can slip in after the
    lease was lost); LeaseLost otherwise.
    """
    keys = (LEASE_KEY.format(host=host), ATTEMPTS_KEY.format(job_id=job_id),
            ATTEMPTS_BASE_KEY.format(job_id=job_id))  # fmt: skip
    value = lease.value if lease is not None else ""
    check = 0 if lease is None else 1
    attempt, deliveries = redis.eval(_START, 3, *keys, value, ATTEMPTS_TTL_S, check)
    if int(attempt) < 0:
        raise LeaseLost(f"job {job_id} not started: this agent no longer holds the {host} lease")
    return int(attempt), int(deliveries)
