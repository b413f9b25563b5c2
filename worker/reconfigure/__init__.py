"""Unattended reconfiguration: the box switches its own reboot-bound configuration and reboots.

Opt-in by the box's owner (worker.yaml `reconfigure:`, see worker/reconfigure/config.py). The
agent decides *when* (no more work here, work waiting in another configuration of this host);
this package does the switch, journals it and checks it took::

    reconfigurer = Reconfigurer(config.reconfigure, root=config.facts_root, state_dir=spool)
    outcome = reconfigurer.after_boot(detected)      # at start: did the last switch take?
    ...
    if not reconfigurer.problems(target, current) and reconfigurer.may_switch(campaign) is None:
        reconfigurer.switch(current, target, campaign)   # returns once the reboot is under way

A switch is journalled before anything changes, counts one reboot against its campaign, and a
switch that fails or does not take blocks its campaign: a box never reboots in a loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jobs.spec import CONFIGURATION_AXES, vram_split_bytes
from jobs.spec import configuration_label as label
from worker.errors import ReconfigureError
from worker.reconfigure.apply import apply_steps, plan
from worker.reconfigure.config import NORMALIZE, AxisConfig, ReconfigureConfig
from worker.reconfigure.firmware import FirmwareAttribute, admin_auth, auth_problem, find_attribute
from worker.reconfigure.kernel import CommandResult, Run, run_argv, run_checked
from worker.reconfigure.state import BootOutcome, Intent, ReconfigureState, StateFile
from worker.sysfs import read_text

__all__ = [
    "BootOutcome", "CommandResult", "ReconfigureConfig", "ReconfigureError", "Reconfigurer",
    "Run", "run_argv",
]  # fmt: skip

log = logging.getLogger("orch.worker")

BOOT_ID = Path("proc/sys/kernel/random/boot_id")  # new on every boot: tells a reboot apart
_REBOOT_TIMEOUT_S = 120.0
_HINTS = {
    "firmware": "firmware ignored the write?",
    "command": "the kernel command line not updated?",
}


def _local_now() -> datetime:
    return datetime.now().astimezone()


class Reconfigurer:
    """Performs, journals and verifies unattended switches of this box's configuration.

    `root` prefixes every /sys and /proc path (like `facts_root`); `state_dir` holds the journal;
    `run` runs an argv with a timeout (kernel.run_argv); `now` is the local clock for
    `allowed_hours` and the journal's times.
    """

    def __init__(
        self,
        config: ReconfigureConfig,
        *,
        root: Path = Path("/"),
        state_dir: Path,
        run: Run = run_argv,
        now: Callable[[], datetime] = _local_now,
    ) -> None:
        self.config = config
        self.root = root
        self.state = StateFile(state_dir)
        self._run = run
        self._now = now

    def __repr__(self) -> str:
        return f"Reconfigurer(axes={self.axes!r}, root={str(self.root)!r}, state={self.state.path})"

    @property
    def axes(self) -> tuple[str, ...]:
        """The configuration axes this box may switch by itself."""
        return tuple(self.config.axes)

    # -- checks --------------------------------------------------------------------------

    def problems(
        self, target: Mapping[str, str], current: Mapping[str, str] | None = None
    ) -> list[str]:
        """Why this box cannot switch itself into `target`; empty when it can.

        With `current`, axes already in place are not checked (they need no switch).
        """
        problems: list[str] = []
        wanted = self._normalize(target, problems)
        if current is not None:
            now = self._normalize(current, [])
            wanted = {axis: value for axis, value in wanted.items() if now.get(axis) != value}
        drivers: set[str] = set()
        for axis, value in wanted.items():
            axis_config = self.config.axes.get(axis)
            if axis_config is None:
                problems.append(
                    f"{axis}: this box's owner does not let it switch {axis} by itself "
                    f"(reconfigure.{axis} in worker.yaml)"
                )
                continue
            if axis_config.firmware_attribute is None:
                continue  # a command takes any well-formed value
            if value not in axis_config.values:
                problems.append(
                    f"{axis}={value}: no firmware value for it in reconfigure.{axis}.values "
                    f"(has {', '.join(axis_config.values)})"
                )
                continue
            found = self._attribute(axis_config)
            if isinstance(found, str):
                problems.append(f"{axis}: {found}")
                continue
            problem = found.check(axis_config.values[value])
            if problem is not None:
                problems.append(f"{axis}={value}: {problem}")
            drivers.add(found.driver)
        for driver in sorted(drivers):
            problem = auth_problem(admin_auth(self.root, driver), self.config.bios_password_file)
            if problem is not None:
                problems.append(problem)
        return problems

    def may_switch(self, campaign: str) -> str | None:
        """Why no switch is allowed now for `campaign`, or None."""
        try:
            state = self.state.load()
        except ReconfigureError as exc:
            return str(exc)
        if state.pending is not None:
            return (
                f"a switch into {label(state.pending.target)} for {state.pending.campaign} is "
                f"pending since {state.pending.at}: the box has not rebooted since"
            )
        if campaign in state.blocked:
            return f"campaign {campaign} is blocked: {state.blocked[campaign]}"
        limit = self.config.max_reboots_per_campaign
        day_ago = self._now() - timedelta(days=1)
        recent = [t for t in state.recent if datetime.fromisoformat(t) > day_ago]
        if len(recent) >= self.config.max_reboots_per_day:
            return (
                f"{len(recent)} unattended reboot(s) in the last 24 hours "
                "(reconfigure.max_reboots_per_day)"
            )
        if state.reboots.get(campaign, 0) >= limit:
            return (
                f"campaign {campaign} used its {limit} unattended reboot(s) "
                "(reconfigure.max_reboots_per_campaign)"
            )
        now = self._now()
        if not self.config.within_allowed_hours(now.time()):
            return (
                f"outside reconfigure.allowed_hours {self.config.allowed_hours} (now {now:%H:%M})"
            )
        return None

    # -- the switch ----------------------------------------------------------------------

    def switch(self, current: Mapping[str, str], target: Mapping[str, str], campaign: str) -> None:
        """Journal, apply and reboot into `target`; returns once the reboot command ran.

        Raises ReconfigureError, without changing anything, when the switch is not allowed or
        not possible; and when a change fails before the reboot: then what was changed is put
        back where it can be, the campaign is blocked and the box does not reboot.
        """
        reason = self.may_switch(campaign)
        if reason is not None:
            raise ReconfigureError(f"not switching for {campaign}: {reason}")
        problems = self.problems(target, current)
        if problems:
            raise ReconfigureError(f"cannot switch into {label(target)}: {'; '.join(problems)}")
        now, wanted = self._normalize(current, []), self._normalize(target, [])
        changed = {axis: value for axis, value in wanted.items() if now.get(axis) != value}
        if not changed:
            raise ReconfigureError(f"the box is already in {label(wanted)}: nothing to switch")
        steps = [
            plan(axis, value, self.config.axes[axis], self.root, now)
            for axis, value in changed.items()
        ]

        state = self.state.load()
        intent = Intent(
            campaign=campaign,
            previous={axis: now.get(axis, "unknown") for axis in changed},
            target=changed,
            methods={step.axis: step.config.method for step in steps},
            at=self._stamp(),
            boot_id=self._boot_id(),
        )
        state.pending = intent
        for axis in changed:
            if axis in now:
                state.original.setdefault(axis, now[axis])
        state.reboots[campaign] = state.reboots.get(campaign, 0) + 1
        day_ago = self._now() - timedelta(days=1)
        state.recent = [t for t in state.recent if datetime.fromisoformat(t) > day_ago]
        state.recent.append(self._stamp())
        self.state.save(state)  # the journal: before the first change
        log.warning(
            "switching %s -> %s for campaign %s (unattended reboot %d of %d)",
            label(intent.previous), label(changed), campaign,
            state.reboots[campaign], self.config.max_reboots_per_campaign,
        )  # fmt: skip

        try:
            apply_steps(
                steps, root=self.root, password_file=self.config.bios_password_file, run=self._run
            )
        except ReconfigureError as exc:
            message = f"switch into {label(changed)} failed before the reboot: {exc}"
            self._block(state, intent, message, clear_pending=True)
            raise ReconfigureError(message) from None

        state.pending = intent.model_copy(update={"stage": "rebooting"})
        self.state.save(state)
        command = self.config.reboot_command
        log.warning("rebooting into %s: %s", label(changed), " ".join(command))
        try:
            run_checked(self._run, command, _REBOOT_TIMEOUT_S, "reboot")
        except ReconfigureError as exc:
            # The changes are made and apply at whatever boot comes next: keep the intent, so
            # that boot is checked, and switch no more for this campaign.
            message = f"switch into {label(changed)} is made but the box did not reboot: {exc}"
            self._block(state, state.pending, message, clear_pending=False)
            raise ReconfigureError(message) from None

    def _block(
        self, state: ReconfigureState, intent: Intent, message: str, *, clear_pending: bool
    ) -> None:
        log.error("%s; no more unattended switches for campaign %s", message, intent.campaign)
        if clear_pending:
            state.pending = None
        state.blocked[intent.campaign] = message
        state.last_outcome = BootOutcome(
            ok=False, campaign=intent.campaign, target=intent.target, detected=intent.previous,
            message=message, at=self._stamp(),
        )  # fmt: skip
        try:
            self.state.save(state)
        except ReconfigureError as exc:  # the failure itself is what the caller must hear
            log.error("%s", exc)

    # -- after the reboot -----------------------------------------------------------------

    def after_boot(self, detected: Mapping[str, str]) -> BootOutcome | None:
        """Check the last switch against the configuration the agent `detected` at start.

        None when no switch was pending (or the box has not rebooted since it was journalled).
        A switch that did not take blocks its campaign. Raises ReconfigureError when the
        journal is corrupt (then no switch is done until the owner fixes or removes it).
        """
        state = self.state.load()
        intent = state.pending
        if intent is None:
            return None
        boot_id = self._boot_id()
        if intent.boot_id is not None and boot_id == intent.boot_id:
            log.warning(
                "a switch into %s is pending but the box has not rebooted since",
                label(intent.target),
            )
            return None
        came_back = {axis: self._loose(axis, detected.get(axis)) for axis in intent.target}
        missed = [axis for axis in intent.target if came_back[axis] != intent.target[axis]]
        if missed:
            hints = sorted({_HINTS[intent.methods.get(axis, "firmware")] for axis in missed})
            if intent.stage == "applying":
                hints.insert(0, "the agent stopped before its reboot command")
            message = (
                f"reboot into {label(intent.target)} did not take: the box came back in "
                f"{label(came_back)} ({'; '.join(hints)})"
            )
            state.blocked[intent.campaign] = message
            log.error("%s; no more unattended switches for campaign %s", message, intent.campaign)
        else:
            message = f"rebooted into {label(intent.target)} for {intent.campaign} as intended"
            log.info("%s", message)
        outcome = BootOutcome(
            ok=not missed, campaign=intent.campaign, target=intent.target, detected=came_back,
            message=message, at=self._stamp(),
        )  # fmt: skip
        state.pending, state.last_outcome = None, outcome
        self.state.save(state)
        return outcome

    def original(self) -> dict[str, str] | None:
        """Each switched axis as it was before the first unattended switch (for `restore`).

        None when nothing was switched, and when the journal is corrupt (then no switch is
        allowed anyway: `may_switch` and `status` say why).
        """
        try:
            return dict(self.state.load().original) or None
        except ReconfigureError:
            return None

    def restored(self) -> None:
        """The box is back in its original configuration: forget it."""
        state = self.state.load()
        state.original = {}
        self.state.save(state)

    def status(self) -> dict[str, Any]:
        """JSON-able summary for the agent's inventory; never raises (a bad journal is `error`)."""
        out: dict[str, Any] = {
            "axes": list(self.axes),
            "values": {
                axis: sorted(c.values, key=_size_key(axis))
                for axis, c in self.config.axes.items()
                if c.firmware_attribute is not None
            },
            "max_reboots_per_campaign": self.config.max_reboots_per_campaign,
            "restore": self.config.restore,
            "allowed_hours": self.config.allowed_hours,
        }
        try:
            state = self.state.load()
        except ReconfigureError as exc:
            return {**out, "error": str(exc)}
        last = state.last_outcome
        return {
            **out,
            "reboots": dict(state.reboots),
            "blocked": dict(state.blocked),
            "pending": state.pending.model_dump(mode="json") if state.pending else None,
            "original": dict(state.original) or None,
            "last_outcome": last.message if last else None,
            "last_outcome_ok": last.ok if last else None,
        }

    # -- helpers ---------------------------------------------------------------------------

    def _attribute(self, axis_config: AxisConfig) -> FirmwareAttribute | str:
        assert axis_config.firmware_attribute is not None
        return find_attribute(self.root, axis_config.firmware_attribute, axis_config.driver)

    def _normalize(self, values: Mapping[str, str], problems: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for axis, value in values.items():
            if axis not in NORMALIZE:
                problems.append(
                    f"unknown configuration axis {axis!r} (known: {', '.join(CONFIGURATION_AXES)})"
                )
                continue
            try:
                out[axis] = NORMALIZE[axis](value)
            except ValueError as exc:
                problems.append(f"{axis}: {exc}")
        return out

    @staticmethod
    def _loose(axis: str, value: str | None) -> str:
        """A detected value in its normal spelling; as is when it has none."""
        if value is None:
            return "unknown"
        try:
            return NORMALIZE[axis](value)
        except ValueError:
            return str(value)

    def _boot_id(self) -> str | None:
        text = read_text(self.root / BOOT_ID)
        return text.strip() or None if text is not None else None

    def _stamp(self) -> str:
        return self._now().isoformat(timespec="seconds")


def _size_key(axis: str) -> Callable[[str], int]:
    return vram_split_bytes if axis == "vram_split" else int
