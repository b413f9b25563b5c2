"""Apply a job's runtime settings before it runs and put the box back after.

Example::

    with RuntimeSettings(setters, job.settings) as applied:
        outcome = engine.run(job, target)
    result.settings = applied.record   # what was asked, found, read back and restored

A setting that cannot be applied, or reads back as something else, raises SettingError before
the job runs (a benchmark labelled `low-power` that ran at `performance` is worse than none);
settings applied so far are restored first. A failed restore does not void the measured job:
it is noted in the record, and the next job that needs the setting sets it again.
"""

from __future__ import annotations

import logging
from types import TracebackType

from jobs.result import AppliedSetting
from worker.settings.base import Setter, SettingError

log = logging.getLogger("orch.worker")


class RuntimeSettings:
    def __init__(self, setters: dict[str, Setter], wanted: dict[str, str]) -> None:
        self.setters = setters
        self.wanted = wanted
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
        setter.apply(value)
        # Recorded before the read-back check, so a half-applied setting is still restored.
        self.record[axis] = record.model_copy(update={"changed": True})
        read_back = setter.read()
        if read_back is not None and read_back != value:
            raise SettingError(f"{axis}: set {value!r}, but the box reads back {read_back!r}")
        log.info("%s set to %s (was %s) by %s", axis, value, previous, setter.method)
        return self.record[axis].model_copy(update={"read_back": read_back})

    def _restore(self) -> None:
        for axis, record in reversed(list(self.record.items())):
            if not record.changed:
                continue
            setter = self.setters[axis]
            back = setter.restore_value(record.previous)
            if back is None:
                self.record[axis] = record.model_copy(update={"restored": False, "error":
                    "nothing to restore to: the previous value could not be read"})  # fmt: skip
                continue
            try:
                setter.apply(back)
            except SettingError as exc:
                log.error("could not restore %s to %s: %s", axis, back, exc)
                self.record[axis] = record.model_copy(update={"restored": False, "error": str(exc)})
                continue
            self.record[axis] = record.model_copy(update={"restored": True})
