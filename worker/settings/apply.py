"""Apply a job's runtime settings before it runs and put the box back after.

Example::

    with RuntimeSettings(setters, job.settings, journal=spool / "restore.json") as applied:
        outcome = engine.run(job, target)
    result.settings = applied.record   # what was asked, found, read back and restored

A setting that cannot be applied, or reads back as something else, raises SettingError before
the job runs (a benchmark labelled `low-power` that ran at `performance` is worse than none);
settings applied so far are restored first. A failed restore does not void the measured job:
it is noted in the record, and the next job that needs the setting sets it again.

What must be put back is written to the `journal` file before anything is changed, and the file
is removed once the box is restored. A worker killed mid-job (OOM killer, power cut) leaves it
behind; the next agent on the box replays it at start (`recover_settings`), so no later job runs
under a 45 W cap it did not ask for.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import TracebackType

from jobs.result import AppliedSetting
from worker.errors import SettingError
from worker.settings.base import Setter

log = logging.getLogger("orch.worker")


class RuntimeSettings:
    """Context manager: applies `wanted` with `setters` on enter, restores on exit."""

    def __init__(
        self, setters: dict[str, Setter], wanted: dict[str, str], journal: Path | None = None
    ) -> None:
        self.setters = setters
        self.wanted = wanted
        self.journal = journal
        self.record: dict[str, AppliedSetting] = {}

    def __enter__(self) -> RuntimeSettings:
        try:
            for axis, value in sorted(self.wanted.items()):
                self.record[axis] = self._apply(axis, value)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._restore()

    def _apply(self, axis: str, value: str) -> AppliedSetting:
        setter = self.setters.get(axis)
        if setter is None:
            allowed = ", ".join(sorted(self.setters)) or "none"
            raise SettingError(
                f"{axis} is not settable on this box (its config allows: {allowed}; add it "
                "under `setters:` in the worker config)"
            )
        problem = setter.check(value)
        if problem:
            raise SettingError(problem)
        previous = setter.read()
        record = AppliedSetting(requested=value, previous=previous, method=setter.method)
        if previous == value:
            return record.model_copy(update={"read_back": previous})
        self._journal_add(axis, setter.restore_value(previous))
        # Recorded before applying, so a half-applied setting is still restored.
        self.record[axis] = record.model_copy(update={"changed": True})
        setter.apply(value)
        read_back = setter.read()
        if read_back is not None and read_back != value:
            raise SettingError(f"{axis}: set {value!r}, but the box reads back {read_back!r}")
        log.info("%s set to %s (was %s) by %s", axis, value, previous, setter.method)
        return self.record[axis].model_copy(update={"read_back": read_back})

    def _restore(self) -> None:
        for axis, record in reversed(list(self.record.items())):
            if not record.changed:
                continue
            back = self.setters[axis].restore_value(record.previous)
            if back is None:
                missing = "nothing to restore to: the previous value could not be read"
                self.record[axis] = record.model_copy(update={"restored": False, "error": missing})
                continue
            error = restore_one(self.setters[axis], axis, back)
            self.record[axis] = record.model_copy(
                update={"restored": error is None, "error": error}
            )
        if self.journal is not None and all(r.restored is not False for r in self.record.values()):
            self.journal.unlink(missing_ok=True)

    def _journal_add(self, axis: str, back: str | None) -> None:
        if self.journal is None or back is None:
            return
        pending = _read_journal(self.journal)
        pending.setdefault(axis, back)  # the oldest value is the box's own
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.journal.with_suffix(".tmp")
        tmp.write_text(json.dumps(pending))
        tmp.replace(self.journal)


def restore_one(setter: Setter, axis: str, back: str) -> str | None:
    """Put `back`, and check it reads back where the setter can read; the error, or None."""
    try:
        setter.apply(back)
    except SettingError as exc:
        log.error("could not restore %s to %s: %s", axis, back, exc)
        return str(exc)
    read_back = setter.read()
    if read_back is not None and read_back != back:
        log.error("restored %s to %s, but the box reads back %s", axis, back, read_back)
        return f"restored {back!r}, but the box reads back {read_back!r}"
    return None


def journal_in(spool: Path) -> Path:
    """Where a box's pending restores live: beside its spooled results (not a `.json`, so the
    spool flush never takes it for a result)."""
    return spool / "settings.restore"


def recover_settings(setters: dict[str, Setter], journal: Path) -> dict[str, str | None]:
    """Replay what a killed worker left to restore; axis -> error (None when restored)."""
    pending = _read_journal(journal)
    if not pending:
        return {}
    outcome: dict[str, str | None] = {}
    for axis, back in pending.items():
        setter = setters.get(axis)
        if setter is None:  # the owner removed the setter since: say so, touch nothing
            outcome[axis] = "no setter for it in the worker config any more"
            continue
        outcome[axis] = restore_one(setter, axis, back)
        log.warning("restored %s to %s after an interrupted job", axis, back)
    journal.unlink(missing_ok=True)
    return outcome


def _read_journal(journal: Path) -> dict[str, str]:
    try:
        data = json.loads(journal.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
