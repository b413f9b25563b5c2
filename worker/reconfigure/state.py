"""What the agent remembers across reboots about switching its box: the journal.

One small JSON file in the agent's state folder. A switch is written down *before* anything is
changed (temp file, fsync, rename, fsync of the folder), so that the agent that comes up after
the reboot knows what it was meant to find, and so that nothing can make it switch in a loop:
every reboot is counted per campaign, and a switch that failed or did not take blocks its
campaign for good (the owner unblocks it by removing the entry or the file).

The file is named `reconfigure.state`, not `.json`: the agent's spool folder treats `*.json`
as results to flush.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.errors import ReconfigureError

# History: 1 - pending intent, reboots and blocks per campaign, original configuration, last
# outcome.
STATE_VERSION = 1
STATE_FILE = "reconfigure.state"


class Intent(BaseModel):
    """A switch under way: journalled before the first change, cleared by the next boot."""

    model_config = ConfigDict(extra="forbid")

    campaign: str
    previous: dict[str, str]  # the changed axes as they were ("unknown" when not detected)
    target: dict[str, str]  # the changed axes as they should come back
    methods: dict[str, str]  # axis -> "firmware" | "command": what to blame when it did not take
    at: str  # ISO time, local
    boot_id: str | None = None  # the kernel's boot id when journalled: tells a reboot apart
    # applying: changes being made; rebooting: all made, the reboot command was run (or failed).
    stage: Literal["applying", "rebooting"] = "applying"


class BootOutcome(BaseModel):
    """How a switch ended: the box came back as intended, or not (then its campaign is blocked)."""

    model_config = ConfigDict(extra="forbid")

    ok: bool
    campaign: str
    target: dict[str, str]
    detected: dict[str, str]
    message: str
    at: str


class ReconfigureState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = STATE_VERSION
    pending: Intent | None = None
    reboots: dict[str, int] = Field(default_factory=dict)  # campaign -> unattended reboots
    blocked: dict[str, str] = Field(default_factory=dict)  # campaign -> why no more switches
    # Each axis as it was before the first unattended switch of it (for `restore`).
    original: dict[str, str] = Field(default_factory=dict)
    last_outcome: BootOutcome | None = None
    # ISO times of the switches journalled in the last day (any campaign): the per-day cap, so
    # that queue messages under ever new campaign names cannot reboot a box over and over.
    recent: list[str] = Field(default_factory=list)


class StateFile:
    """Load and save the journal; a corrupt file is reported, never guessed around."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / STATE_FILE

    def load(self) -> ReconfigureState:
        """The saved state; a fresh one when there is no file.

        A file that cannot be parsed raises ReconfigureError and stays as it is: starting over
        would forget a pending switch, the reboot counts and the blocks, which is how a box
        would end up rebooting in a loop.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ReconfigureState()
        except (OSError, UnicodeDecodeError) as exc:
            raise self._corrupt(getattr(exc, "strerror", None) or str(exc)) from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise self._corrupt(f"not JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("version"), int):
            if data["version"] > STATE_VERSION:
                raise ReconfigureError(
                    f"{self.path} was written by a newer orch (state version {data['version']}, "
                    f"this one reads {STATE_VERSION}): unattended reconfiguration stays off "
                    "until the agent is upgraded"
                )
        try:
            return ReconfigureState.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "top level"
            raise self._corrupt(f"{where}: {first['msg']}") from None

    def _corrupt(self, why: str) -> ReconfigureError:
        return ReconfigureError(
            f"{self.path} is corrupt ({why}): unattended reconfiguration is off until it is "
            "fixed or removed (removing it forgets any pending switch, reboot counts and "
            "blocked campaigns)"
        )

    def save(self, state: ReconfigureState) -> None:
        """Atomically replace the file: a power cut leaves the old state or the new, never half."""
        data = (state.model_dump_json(indent=2) + "\n").encode("utf-8")
        try:
            _write_atomically(self.path, data)
        except OSError as exc:
            raise ReconfigureError(f"cannot write {self.path}: {exc.strerror or exc}") from None


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder's entry is; not every platform can open one.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
