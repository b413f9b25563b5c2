"""When a box switches itself into another configuration (worker.yaml `reconfigure:`).

The agent calls `Unattended.tick()` from its heartbeat. The box switches only when

- its owner allowed it (a `reconfigure:` section; never a job or a matrix),
- it has no more work in its current configuration: its queue is empty and no job of this box
  is running or delivered, on two heartbeats in a row,
- jobs of this host wait in another configuration's queue (or, with `restore: true`, nothing
  waits anywhere and the box is not in the configuration it started the campaign in),
- the reconfigurer allows it now (time window, reboot budget, no failed attempt for that
  campaign) and can set the target (`problems`).

The target is the first configuration of `jobs.spec.reconfiguration_sequence`, the order the
coordinator also shows, so each configuration is visited once. `Reconfigurer.switch` journals
the intent, writes the BIOS attribute / runs the kernel-parameter command, then the reboot
command; the next agent's `at_start` checks that the box came back in the target.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from jobs.inventory import ReconfigureInfo
from jobs.protocol import REBOOT_GRACE_S, InvalidMessage, check_message, unacked_parts
from jobs.spec import (
    configuration_label,
    configuration_of_queue,
    host_of_queue,
    reconfiguration_sequence,
)
from worker.config import WorkerConfig
from worker.errors import ReconfigureError
from worker.reconfigure import Reconfigurer

log = logging.getLogger("orch.worker")

RESTORE_CAMPAIGN = "restore"  # what a switch back to the original configuration is counted under


class Unattended:
    """The agent's side of unattended reconfiguration: when, and into what."""

    def __init__(
        self,
        config: WorkerConfig,
        reconfigurer: Reconfigurer,
        redis: Any,
        *,
        broker_now: Callable[[], float],
        publish: Callable[[], None] = lambda: None,
        job_lock: threading.Lock | None = None,
        is_busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self.reconfigurer = reconfigurer
        self.redis = redis
        self.broker_now = broker_now
        self.publish = publish  # the inventory, so the coordinator hears of a reboot first
        # Held by the task from "is the box rebooting?" to "busy", and by `tick` from "is it
        # idle?" to "rebooting": a job never starts under a switch.
        self.job_lock = job_lock or threading.Lock()
        self.is_busy = is_busy
        self.stalled: str | None = None
        self.idle_beats = 0
        self.rebooting_into: dict[str, str] | None = None
        self.rebooting_since: float | None = None
        self.last_outcome: str | None = None
        self._said: set[str] = set()  # refusals already logged (once each, not every beat)

    # -- what the inventory says ---------------------------------------------------------------

    def info(self) -> ReconfigureInfo:
        rc = self.config.reconfigure
        assert rc is not None
        status = self.reconfigurer.status()
        blocked = dict(status.get("blocked") or {})
        if status.get("error"):  # an unreadable journal stops every switch until fixed
            blocked["*"] = str(status["error"])
        return ReconfigureInfo(
            axes=sorted(self.reconfigurer.axes),
            values=dict(status.get("values") or {}),
            max_reboots_per_campaign=rc.max_reboots_per_campaign,
            restore=rc.restore,
            reboots=dict(status.get("reboots") or {}),
            blocked=blocked,
            last_outcome=self.last_outcome or status.get("last_outcome"),
            stalled=self.stalled or (str(status["error"]) if status.get("error") else None),
            rebooting_into=self.rebooting_into,
            rebooting_since=self.rebooting_since,
        )

    # -- start -----------------------------------------------------------------------------

    def at_start(self, detected: dict[str, str]) -> None:
        """After a (re)boot: did the switch the previous agent started take? `detected` is
        what the box reports now (not what the config declares)."""
        try:
            outcome = self.reconfigurer.after_boot(detected)
        except ReconfigureError as exc:
            # Switching stays off (may_switch says why); the box still runs its jobs.
            self.last_outcome = f"unattended reconfiguration is off: {exc}"
            log.error("%s", self.last_outcome)
            return
        if outcome is not None:
            self.last_outcome = outcome.message
            (log.info if outcome.ok else log.error)(
                "unattended reconfiguration: %s", outcome.message
            )
            return
        pending = self.reconfigurer.status().get("pending")
        if pending and pending.get("stage") == "rebooting":
            # Switched, and the reboot command ran, but this boot is the same one: the box is
            # going down (or the command did nothing: `_check_reboot_happens` says so).
            self.rebooting_into = dict(pending.get("target") or {})
            self.rebooting_since = self.broker_now()
            log.warning(
                "a switch to %s waits for a reboot: holding jobs until it happens",
                configuration_label(self.rebooting_into),
            )

    # -- every heartbeat -------------------------------------------------------------------

    def tick(self) -> bool:
        """One look from the heartbeat; True when the box was told to reboot."""
        if self.rebooting_into is not None:
            self._check_reboot_happens()
            return False
        current = self.config.configuration
        with self.job_lock:
            if self.is_busy() or self._has_work_here():
                self.idle_beats = 0
                return False
            self.idle_beats += 1
            if self.idle_beats < 2:
                return False
            choice = self._target()
            if choice is None:
                self.stalled = None
                return False
            target, campaign = choice
            rc = self.config.reconfigure
            assert rc is not None
            now = datetime.now().astimezone()
            if not rc.within_allowed_hours(now.time()):
                # Not a human's business: it switches by itself once the window opens.
                self._say_once(f"outside allowed_hours {rc.allowed_hours}: switching later")
                return False
            reason = self._refusal(target, campaign)
            if reason is not None:
                self.stalled = f"cannot switch into {configuration_label(target)}: {reason}"
                self._say_once(self.stalled)
                return False
            self.stalled = None
            self.rebooting_into, self.rebooting_since = target, self.broker_now()
        self.publish()  # the coordinator learns of the reboot before anything is touched
        log.warning(
            "unattended reconfiguration: %s -> %s for %s, then reboot",
            configuration_label(current), configuration_label(target), campaign,
        )  # fmt: skip
        try:
            self.reconfigurer.switch(current, target, campaign)
        except ReconfigureError as exc:
            self.rebooting_into = self.rebooting_since = None
            self.last_outcome = f"switch to {configuration_label(target)} failed: {exc}"
            log.error("unattended reconfiguration: %s", self.last_outcome)
            return False
        self.last_outcome = f"rebooting into {configuration_label(target)} for {campaign}"
        return True

    def _refusal(self, target: dict[str, str], campaign: str) -> str | None:
        problems = self.reconfigurer.problems(target, self.config.configuration)
        if problems:
            return "; ".join(problems)
        return self.reconfigurer.may_switch(campaign)

    def _say_once(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            log.warning("unattended reconfiguration waits: %s", text)

    def _check_reboot_happens(self) -> None:
        """The reboot command ran but the box is still up: say so; after the grace, give up
        (the next start finds the intent pending and records the failure)."""
        since = self.rebooting_since or self.broker_now()
        if self.broker_now() - since > REBOOT_GRACE_S:
            log.error(
                "the reboot command ran %d s ago and the box is still up: check "
                "`reboot_command` in the worker config; running this configuration's jobs "
                "meanwhile (the switch takes effect at the next boot)",
                REBOOT_GRACE_S,
            )
            self.rebooting_into = self.rebooting_since = None

    # -- the queues ------------------------------------------------------------------------

    def _has_work_here(self) -> bool:
        """A job waits in this configuration's queue, or one of this box is delivered."""
        if int(self.redis.llen(self.config.queue)):
            return True
        for raw in self.redis.hvals("unacked"):
            try:
                _message, routing_key = unacked_parts(raw)
            except InvalidMessage:
                continue
            if host_of_queue(routing_key) == self.config.host:
                return True
        return False

    def _waiting_elsewhere(self) -> dict[str, str]:
        """This host's other queues whose oldest message is a valid job of this host:
        queue -> that job's campaign. Anything else in a queue (junk, a forged message) never
        makes the box reboot."""
        out = {}
        for key in self.redis.scan_iter(match=f"orch.{self.config.host}.*", _type="list"):
            queue = key.decode() if isinstance(key, bytes) else str(key)
            if host_of_queue(queue) != self.config.host or queue == self.config.queue:
                continue
            campaign = self._campaign_of(queue)
            if campaign is not None:
                out[queue] = campaign
        return out

    def _target(self) -> tuple[dict[str, str], str] | None:
        """(configuration to switch into, campaign it is for), or None."""
        current = self.config.configuration
        waiting: dict[str, tuple[dict[str, str], str]] = {}
        for queue, campaign in self._waiting_elsewhere().items():
            configuration = configuration_of_queue(queue)
            if all(current.get(a) == v for a, v in configuration.items()):
                # A queue that names fewer axes than this box routes by (made before it did):
                # no switch reaches it. Said once; its jobs wait for a re-submit.
                self._say_once(f"{queue} names fewer configuration axes than {self.config.queue}")
                continue
            waiting[json.dumps(configuration, sort_keys=True)] = (configuration, campaign)
        if waiting:
            configs = [c for c, _campaign in waiting.values()]
            target = reconfiguration_sequence(current, configs)[0]
            return target, waiting[json.dumps(target, sort_keys=True)][1]
        rc = self.config.reconfigure
        original = self.reconfigurer.original()
        if rc is not None and rc.restore and original is not None:
            # `original` holds only the axes that were switched.
            if all(current.get(axis) == value for axis, value in original.items()):
                self.reconfigurer.restored()
                return None
            return {**current, **original}, RESTORE_CAMPAIGN
        return None

    def _campaign_of(self, queue: str) -> str | None:
        """The campaign of the job that has waited longest in `queue` (kombu pushes on the
        left and pops on the right), when that message is a valid job for this queue."""
        raw = self.redis.lindex(queue, -1)
        try:
            job = check_message(raw, queue) if raw else None
        except InvalidMessage:  # the agent dead-letters it when it gets there
            return None
        return job.campaign if job is not None else None
