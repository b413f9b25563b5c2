"""Helpers shared by the per-process sources: cumulative counters and the process tree."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path

from worker.sysfs import read_text
from worker.telemetry.base import Every


class CounterDeltas:
    """Many cumulative counters (one per client or process) -> their summed increase per group.

    Keys are (group, member): e.g. ("gfx", client 17) or ("cpu", pid 4242). Two rules:
    - a counter that reads lower than before is stale, not reset: keep the larger value until it
      catches up (the DRM usage-stats doc asks exactly this of readers);
    - a member first seen after the first read contributes nothing until its second read. We
      cannot tell whether it started at zero within the interval or merely came into view late
      (the process tree is re-read once a second), and attributing its whole history to one
      interval would show a spike far above 100%. Under-counting one interval is the safer error.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, Hashable], float] | None = None

    def reset(self) -> None:
        self._last = None

    def update(self, values: Mapping[tuple[str, Hashable], float]) -> dict[str, float] | None:
        """Record a read; return group -> increase since the previous read (None on the first)."""
        previous = self._last
        kept: dict[tuple[str, Hashable], float] = {}
        increase: dict[str, float] = {}
        for key, value in values.items():
            old = None if previous is None else previous.get(key)
            if old is None:
                kept[key] = value
                increase.setdefault(key[0], 0.0)
                continue
            value = max(value, old)
            kept[key] = value
            increase[key[0]] = increase.get(key[0], 0.0) + (value - old)
        self._last = kept
        if previous is None:
            return None
        # A group whose members all vanished (the process exited) still reads 0, not "unknown".
        for key in previous:
            increase.setdefault(key[0], 0.0)
        return increase


class ProcessTree:
    """A process and its descendants under a /proc tree, re-read at most every `refresh_s`.

    Children come from /proc/PID/task/TID/children (one small file per thread, no scan of every
    process on the box); kernels built without CONFIG_PROC_CHILDREN lack that file, and then the
    parent field of every /proc/PID/stat is read instead.
    """

    def __init__(self, proc: Path, refresh_s: float = 1.0) -> None:
        self.proc = proc
        self._pid: int | None = None
        self._pids: list[int] = []
        self._refresh = Every(refresh_s)

    @property
    def root_pid(self) -> int | None:
        return self._pid

    def watch(self, pid: int) -> None:
        if pid != self._pid:
            self._pid, self._pids = pid, []
            self._refresh.reset()

    def pids(self, now: float) -> list[int]:
        """The watched process and its descendants; [] when none is watched or it exited."""
        if self._pid is None:
            return []
        if self._refresh.due(now):
            self._pids = self._descendants(self._pid)
        return self._pids

    def _descendants(self, pid: int) -> list[int]:
        if not (self.proc / str(pid)).is_dir():
            return []
        found = [pid]
        seen = {pid}
        parents: dict[int, list[int]] | None = None
        index = 0
        while index < len(found):
            current = found[index]
            index += 1
            kids = self._children(current)
            if kids is None:
                parents = parents if parents is not None else self._parent_map()
                kids = parents.get(current, [])
            for kid in kids:
                if kid not in seen:
                    seen.add(kid)
                    found.append(kid)
        return found

    def _children(self, pid: int) -> list[int] | None:
        try:
            tasks = os.listdir(self.proc / str(pid) / "task")
        except OSError:
            return []  # exited between reads
        kids: list[int] = []
        seen_file = False
        for tid in tasks:
            text = read_text(self.proc / str(pid) / "task" / tid / "children")
            if text is None:
                continue
            seen_file = True
            kids += [int(word) for word in text.split() if word.isdigit()]
        return kids if seen_file or not tasks else None

    def _parent_map(self) -> dict[int, list[int]]:
        parents: dict[int, list[int]] = {}
        try:
            entries = [name for name in os.listdir(self.proc) if name.isdigit()]
        except OSError:
            return parents
        for name in entries:
            text = read_text(self.proc / name / "stat")
            if text is None:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so cut at the
            # last ")".
            fields = text[text.rfind(")") + 1 :].split()
            if len(fields) >= 2 and fields[1].isdigit():
                parents.setdefault(int(fields[1]), []).append(int(name))
        return parents
