"""Making the changes of one switch: firmware writes and commands, checked, undone on failure.

Example::

    steps = [plan(axis, value, config.axes[axis], root, current) for axis, value in changed.items()]
    apply_steps(steps, root=root, password_file=config.bios_password_file, run=run)

The BIOS admin password (when the firmware has one) is written once for the whole switch and
cleared after it, failures included. A step that fails raises ReconfigureError after the steps
made before it were put back where that is possible, so a half-made switch does not surprise
the owner at the next boot.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from worker.errors import ReconfigureError
from worker.reconfigure.config import AxisConfig
from worker.reconfigure.firmware import (
    FirmwareAttribute,
    PasswordSession,
    Secret,
    admin_auth,
    find_attribute,
    pending_reboot,
    read_password,
)
from worker.reconfigure.kernel import Run, fill, run_checked

log = logging.getLogger("orch.worker")


@dataclass
class Step:
    """One axis to change: a firmware attribute to write, or a command to run."""

    axis: str
    value: str  # the configuration value ("32G")
    config: AxisConfig
    attribute: FirmwareAttribute | None = None
    written: str | None = None  # the firmware value to write ("32GB")
    before: str | None = None  # the attribute's value before, or the axis's configuration value


def plan(axis: str, value: str, config: AxisConfig, root: Path, current: Mapping[str, str]) -> Step:
    """The step that sets `axis` to `value`, with what to put back if the switch fails."""
    step = Step(axis, value, config, before=current.get(axis))
    if config.firmware_attribute is not None:
        found = find_attribute(root, config.firmware_attribute, config.driver)
        if isinstance(found, str):
            raise ReconfigureError(f"{axis}: {found}")
        step.attribute, step.written = found, config.values[value]
        step.before = found.current()
    return step


def apply_steps(steps: list[Step], *, root: Path, password_file: Path | None, run: Run) -> None:
    drivers = sorted({s.attribute.driver for s in steps if s.attribute is not None})
    auths = {driver: admin_auth(root, driver) for driver in drivers}
    password: Secret | None = None
    if any(auth is not None and auth.enabled for auth in auths.values()):
        password = read_password(password_file)
    applied: list[Step] = []
    with ExitStack() as sessions:
        for driver in drivers:
            sessions.enter_context(PasswordSession(auths[driver], password))
        try:
            for step in steps:
                _set(step, root, run)
                applied.append(step)
        except ReconfigureError as exc:
            raise ReconfigureError(f"{exc}{_roll_back(applied, run)}") from None


def _set(step: Step, root: Path, run: Run) -> None:
    if step.attribute is None:
        argv = fill(step.config.command, step.value)
        log.info("%s: running %s", step.axis, " ".join(argv))
        run_checked(run, argv, step.config.timeout_s, f"{step.axis}={step.value}")
        return
    attribute, value = step.attribute, step.written or ""
    if step.before == value:
        log.info("%s: %r already reads %r (set, or pending)", step.axis, attribute.name, value)
        return
    log.info("%s: writing %r = %r (%s)", step.axis, attribute.name, value, attribute.driver)
    attribute.write(value)
    after = attribute.current()
    pending = pending_reboot(root, attribute.driver)
    if after == value:
        if pending is False:
            log.warning("%s: pending_reboot reads 0 after the write; the boot will tell", step.axis)
        return
    if after == step.before and pending:
        return  # this firmware shows the active value until the boot; the boot will tell
    flag = "unreadable" if pending is None else str(int(pending))
    raise ReconfigureError(
        f"firmware attribute {attribute.name!r} ({attribute.driver}): wrote {value!r} but it "
        f"reads back {after!r} (pending_reboot {flag}): the firmware did not take it"
    )


def _roll_back(applied: list[Step], run: Run) -> str:
    """Put back what was changed before a failure, best effort; a note for the message."""
    notes: list[str] = []
    for step in reversed(applied):
        if step.attribute is not None and step.before == step.written:
            continue  # it already read so: nothing was written
        if step.before is None:
            notes.append(f"{step.axis} not put back: its previous value is unknown")
            continue
        try:
            if step.attribute is not None:
                step.attribute.write(step.before)
            else:
                argv = fill(step.config.command, step.before)
                run_checked(run, argv, step.config.timeout_s, f"{step.axis} back")
        except ReconfigureError as exc:
            notes.append(f"{step.axis} not put back: {exc}")
            continue
        notes.append(f"{step.axis} put back to {step.before}")
    return f" ({'; '.join(notes)})" if notes else ""
