"""Riding out a broker restart: how long the coordinator's commands wait for the broker.

A broker that restarts (an upgrade, `systemctl restart valkey`, its box rebooting) refuses
connections for a few seconds, then answers again with its data (AOF). Every coordinator
command (status, submit, cancel, retry, hosts, dlq) waits for it, with backoff and one line on
stderr, up to `outage_limit_s()`: `--broker-outage SECONDS` or `$ORCH_BROKER_OUTAGE_S`
(default 60; 0 gives up at once). `orch submit --wait` waits longer between its polls
(`submit.wait_for`, REBOOT_GRACE_S), a box reboot being expected there.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import redis as redis_lib
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from jobs.brokerurl import connection_problem, redact_url

# The limit itself lives apart, so that the CLI sets it without importing redis-py;
# broker.py takes outage_limit_s from here, beside the retry it bounds.
from orchestrator.outagelimit import OUTAGE_ENV
from orchestrator.outagelimit import outage_limit_s as outage_limit_s

PUBLISH_RETRY_STEP_S = 5.0  # the longest pause between two tries of a publish


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class OutageRetry(Retry):
    """redis-py's retry, bounded by time instead of a count, that does not retry what no
    wait can fix (`jobs.brokerurl.connection_problem`).

    One outage is one clock, shared by the nested retries redis-py makes (a command retries
    its connect, which retries itself), so the wait never exceeds `outage_s` in all."""

    def __init__(
        self, url: str, outage_s: float, announce: Callable[[str], None] = _stderr
    ) -> None:
        super().__init__(
            ExponentialBackoff(cap=PUBLISH_RETRY_STEP_S, base=0.2),
            retries=-1,
            supported_errors=(redis_lib.ConnectionError, redis_lib.TimeoutError, TimeoutError),
        )
        self.url = url
        self.outage_s = outage_s
        self.announce = announce
        self._since: float | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> OutageRetry:
        # redis-py copies the retry for its pool; the copy must keep url, limit and announce.
        return OutageRetry(self.url, self.outage_s, self.announce)

    def call_with_retry(
        self,
        do: Callable[[], Any],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> Any:
        failures = 0
        while True:
            try:
                result = do()
            except self._supported_errors as error:
                if is_retryable is not None and not is_retryable(error):
                    raise
                if connection_problem(self.url, error) is not None:
                    raise  # a wrong password or TLS to a plain port: waiting changes nothing
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                now = time.monotonic()
                if self._since is None:
                    self._since = now
                    if self.outage_s > 0:
                        self.announce(
                            f"the broker at {redact_url(self.url)} is not answering ({error}); "
                            f"retrying for up to {self.outage_s:g} s (--broker-outage, "
                            f"${OUTAGE_ENV})"
                        )
                left = self._since + self.outage_s - now
                if left <= 0:
                    raise
                time.sleep(min(self._backoff.compute(failures), left))
                continue
            if self._since is not None:
                self.announce(f"the broker is back after {time.monotonic() - self._since:.0f} s")
                self._since = None
            return result
