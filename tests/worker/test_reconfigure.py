"""Unattended reconfiguration against copies of firmware-attributes trees (tests/fixtures/
firmware-attributes): config checks, why a switch is refused, the journal written before any
change, the order of writes and commands, failures that block a campaign instead of looping,
the check after the reboot, and the BIOS password kept out of everything.

The trees are plain files, so what a driver does on its own (set pending_reboot, refuse or
ignore a value) is played by `Firmware`, which wraps the one function that writes to sysfs.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from worker.config import load_worker_config
from worker.errors import ConfigError, ReconfigureError
from worker.reconfigure import (
    CommandResult,
    ReconfigureConfig,
    Reconfigurer,
    firmware,
    run_argv,
)
from worker.reconfigure.firmware import Secret

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "firmware-attributes"
CLASS = "sys/class/firmware-attributes"
BOOT_ID = "proc/sys/kernel/random/boot_id"
UMA = "UMA Frame Buffer Size"
HP_UMA = f"hp-bioscfg/attributes/{UMA}"
HP_PASSWORD = "hp-bioscfg/authentication/Setup Password/current_password"
PASSWORD = "Hunter2-S3cret!"  # nothing else in a message could contain this by chance
GRUBBY = ["/usr/sbin/grubby", "--update-kernel=ALL", "--args=ttm.pages_limit={value}"]
LATE = datetime(2025, 3, 1, 23, 30)  # inside 22:00-06:00


def make_root(tmp_path: Path, *drivers: str) -> Path:
    """A writable root with the named drivers' trees and a boot id."""
    root = tmp_path / "root"
    for driver in drivers:
        shutil.copytree(FIXTURES / driver, root / CLASS / driver)
    (root / BOOT_ID).parent.mkdir(parents=True, exist_ok=True)
    (root / BOOT_ID).write_text("6f1c0d6e-boot-1\n")
    return root


def reboot(root: Path, n: int = 2) -> None:
    (root / BOOT_ID).write_text(f"6f1c0d6e-boot-{n}\n")


def password_file(tmp_path: Path, mode: int = 0o600, text: str = PASSWORD + "\n") -> Path:
    path = tmp_path / "bios-password"
    path.write_text(text)
    path.chmod(mode)
    return path


def hp_config(tmp_path: Path, **extra: Any) -> ReconfigureConfig:
    """HP carve-out by firmware attribute, ttm.pages_limit by grubby, password file 600."""
    data: dict[str, Any] = {
        "vram_split": {
            "firmware_attribute": UMA,
            "values": {"512M": "512MB", "32G": "32GB", "48G": "48GB", "24G": "24GB"},
        },
        "ttm_pages_limit": {"command": GRUBBY},
        "bios_password_file": str(password_file(tmp_path)),
    }
    return ReconfigureConfig.model_validate({**data, **extra})


class Events:
    """One ordered record of sysfs writes and commands, with the journal as each one saw it."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.items: list[tuple[str, ...]] = []
        self.journal: list[dict[str, Any] | None] = []

    def add(self, *item: str) -> None:
        self.items.append(item)
        state = self.state_dir / "reconfigure.state"
        self.journal.append(json.loads(state.read_text()) if state.exists() else None)


class FakeRun:
    """`run` that records argv and answers per program (argv[0]): a result or an exception."""

    def __init__(self, events: Events, answers: dict[str, CommandResult | Exception] | None = None):
        self.events = events
        self.answers = answers or {}
        self.calls: list[tuple[list[str], float]] = []

    def __call__(self, argv: Sequence[str], timeout_s: float) -> CommandResult:
        self.calls.append((list(argv), timeout_s))
        self.events.add("run", *argv)
        answer = self.answers.get(argv[0], CommandResult(0, ""))
        if isinstance(answer, Exception):
            raise answer
        return answer


class Firmware:
    """Plays the BIOS driver: a current_value write sets pending_reboot, unless told to refuse
    (EINVAL) or ignore the value; `pending_only` keeps the old value but reports a pending change
    (firmware that shows the active value until the boot)."""

    def __init__(self, root: Path, events: Events, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.events = root, events
        self.refuse = self.ignore = self.pending_only = False
        self.interrupt = False
        self.real = firmware.write_attribute
        monkeypatch.setattr(firmware, "write_attribute", self.write)

    def write(self, path: Path, text: str) -> None:
        rel = path.relative_to(self.root / CLASS).as_posix()
        self.events.add("write", rel, text)
        if not rel.endswith("/current_value"):
            self.real(path, text)
            return
        if self.interrupt:
            raise KeyboardInterrupt  # the agent killed mid-switch
        if self.refuse:
            raise OSError(errno.EINVAL, "Invalid argument")
        if not (self.ignore or self.pending_only):
            self.real(path, text)
        if not self.ignore:
            self.real(path.parents[1] / "pending_reboot", "1\n")


@pytest.fixture
def events(tmp_path: Path) -> Events:
    return Events(tmp_path / "state")


@pytest.fixture
def hp(tmp_path: Path) -> Path:
    return make_root(tmp_path, "hp-bioscfg")


def reconfigurer(
    tmp_path: Path,
    root: Path,
    config: ReconfigureConfig,
    run: FakeRun | None = None,
    now: datetime = LATE,
) -> Reconfigurer:
    fake = run or FakeRun(Events(tmp_path / "state"))
    return Reconfigurer(config, root=root, state_dir=tmp_path / "state", run=fake, now=lambda: now)


def journal(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "state" / "reconfigure.state").read_text())
    return data


# -- config ------------------------------------------------------------------------------


def test_config_takes_either_method_and_normalizes_the_values_keys() -> None:
    config = ReconfigureConfig.model_validate(
        {
            "vram_split": {
                "firmware_attribute": UMA,
                "values": {"512m": "512MB", "32 GiB": "32GB"},
            },
            "ttm_pages_limit": {"command": GRUBBY, "timeout_s": 30},
        }
    )
    assert tuple(config.axes) == ("vram_split", "ttm_pages_limit")
    assert config.axes["vram_split"].values == {"512M": "512MB", "32G": "32GB"}
    assert [a.method for a in config.axes.values()] == ["firmware", "command"]
    assert config.reboot_command == ["systemctl", "reboot"]
    assert (config.max_reboots_per_campaign, config.allowed_hours, config.restore) == (
        4,
        None,
        False,
    )
    ttm = ReconfigureConfig.model_validate(
        {"ttm_pages_limit": {"firmware_attribute": "TtmPages", "values": {"0008388608": "8G"}}}
    )
    assert ttm.axes["ttm_pages_limit"].values == {"8388608": "8G"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {
                "vram_split": {
                    "firmware_attribute": UMA,
                    "values": {"32G": "32GB"},
                    "command": GRUBBY,
                }
            },
            "give `firmware_attribute` (with `values`) or `command`, not both",
        ),
        ({"vram_split": {}}, "give `firmware_attribute` (with `values`) or `command` (argv)"),
        ({"vram_split": {"firmware_attribute": UMA}}, "`firmware_attribute` needs `values`"),
        (
            {"ttm_pages_limit": {"command": GRUBBY, "values": {"1": "1"}}},
            "`values` and `driver` belong to `firmware_attribute`",
        ),
        ({"ttm_pages_limit": {"command": ["grubby", "{w}"]}}, "only {value} may be filled in"),
        (
            {"ttm_pages_limit": {"command": ["grubby", "{value!r}"]}},
            "only {value} may be filled in",
        ),
        ({"ttm_pages_limit": {"command": ["grubby", "{value"]}}, "(write {{ for a brace)"),
        ({"ttm_pages_limit": {"command": ["update-grub"]}}, "must say where the value goes"),
        (
            {"power_limit_w": {"command": ["x", "{value}"]}},
            "power_limit_w: not a configuration axis (known: vram_split, ttm_pages_limit)",
        ),
        ({"restore": True}, "name at least one axis to switch: vram_split, ttm_pages_limit"),
        (
            {"vram_split": {"firmware_attribute": UMA, "values": {"lots": "x"}}},
            "'lots' is not a VRAM size",
        ),
        (
            {"vram_split": {"firmware_attribute": UMA, "values": {"32G": "a", "32g": "b"}}},
            "'32g' and another key are both 32G",
        ),
        (
            {"vram_split": {"firmware_attribute": "../../x", "values": {"32G": "a"}}},
            "is not a folder name under /sys/class/firmware-attributes",
        ),
        (
            {"vram_split": {"firmware_attribute": UMA, "values": {"32G": "32\nGB"}}},
            "is not a one-line firmware value",
        ),
        ({"ttm_pages_limit": {"command": GRUBBY}, "allowed_hours": "10pm-6am"}, "HH:MM-HH:MM"),
        ({"ttm_pages_limit": {"command": GRUBBY}, "allowed_hours": "22:00-22:00"}, "empty window"),
        ({"ttm_pages_limit": {"command": GRUBBY}, "max_reboots_per_campaign": 0}, ">= 1"),
        ({"ttm_pages_limit": {"command": GRUBBY}, "reboot_command": []}, "at least 1 item"),
    ],
)
def test_config_refuses(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        ReconfigureConfig.model_validate(data)
    assert expected in str(info.value).replace("greater than or equal to", ">=")


def test_worker_yaml_resolves_the_password_file_beside_it(tmp_path: Path) -> None:
    (tmp_path / "worker.yaml").write_text(
        "host: halo\n"
        "reconfigure:\n"
        f"  vram_split: {{firmware_attribute: {UMA}, values: {{512M: 512MB, 32G: 32GB}}}}\n"
        "  bios_password_file: secrets/bios\n"
    )
    config = load_worker_config(tmp_path / "worker.yaml")
    assert config.reconfigure is not None
    assert config.reconfigure.bios_password_file == (tmp_path / "secrets" / "bios").resolve()
    (tmp_path / "worker.yaml").write_text("host: halo\nreconfigure: {vram_split: {}}\n")
    with pytest.raises(
        ConfigError, match=r"worker.yaml:\d+: reconfigure.vram_split: give `firmware_attribute`"
    ):
        load_worker_config(tmp_path / "worker.yaml")


# -- problems ----------------------------------------------------------------------------


def test_no_problems_when_attribute_value_and_password_check(tmp_path: Path, hp: Path) -> None:
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path))
    assert r.axes == ("vram_split", "ttm_pages_limit")
    assert r.problems({"vram_split": "32G", "ttm_pages_limit": "8388608"}) == []
    assert r.problems({"vram_split": "32g"}) == []  # spelled as a queue would not, still fine


def test_problems_with_the_asked_configuration(tmp_path: Path, hp: Path) -> None:
    config = hp_config(tmp_path).model_copy(update={"ttm_pages_limit": None})
    r = reconfigurer(tmp_path, hp, config)
    assert r.problems({"power_limit_w": "45", "vram_split": "lots"}) == [
        "unknown configuration axis 'power_limit_w' (known: vram_split, ttm_pages_limit)",
        "vram_split: 'lots' is not a VRAM size: expected e.g. 512M, 32G or 96G",
    ]
    assert r.problems({"ttm_pages_limit": "8388608"}) == [
        "ttm_pages_limit: this box's owner does not let it switch ttm_pages_limit by itself "
        "(reconfigure.ttm_pages_limit in worker.yaml)"
    ]
    # an axis already in place needs no switch, so no permission
    assert r.problems({"ttm_pages_limit": "8388608"}, {"ttm_pages_limit": "8388608"}) == []
    assert r.problems({"vram_split": "64G"}) == [
        "vram_split=64G: no firmware value for it in reconfigure.vram_split.values "
        "(has 512M, 32G, 48G, 24G)"
    ]
    assert r.problems({"vram_split": "24G"}) == [
        f"vram_split=24G: firmware attribute '{UMA}' (hp-bioscfg): '24GB' is not one of its "
        "possible_values (Auto, 512MB, 1GB, 2GB, 4GB, 8GB, 16GB, 32GB, 48GB, 64GB, 96GB)"
    ]


def test_a_command_axis_takes_any_well_formed_value(tmp_path: Path, hp: Path) -> None:
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path))
    assert r.problems({"ttm_pages_limit": "27648000"}) == []
    assert r.problems({"ttm_pages_limit": "-5"}) == [
        "ttm_pages_limit: ttm_pages_limit must be positive, not '-5'"
    ]


def test_problems_finding_the_attribute(tmp_path: Path) -> None:
    dell = make_root(tmp_path / "a", "dell-wmi-sysman")
    r = reconfigurer(tmp_path, dell, hp_config(tmp_path))
    assert r.problems({"vram_split": "32G"}) == [
        f"vram_split: firmware attribute '{UMA}' not found under "
        "/sys/class/firmware-attributes/*/attributes (is the BIOS driver (dell-wmi-sysman, "
        "thinklmi, hp-bioscfg) loaded, and is the name the folder's?)"
    ]
    both = make_root(tmp_path / "b", "hp-bioscfg", "thinklmi")
    r = reconfigurer(tmp_path, both, hp_config(tmp_path))
    assert r.problems({"vram_split": "32G"}) == [
        f"vram_split: firmware attribute '{UMA}' is found under several drivers "
        "(hp-bioscfg, thinklmi): say which in `driver`"
    ]
    named = hp_config(tmp_path)
    named.axes["vram_split"].driver = "thinklmi"
    r = reconfigurer(tmp_path, both, named)
    # think-lmi has no `type`: its possible_values still bound the value; no admin password
    assert r.problems({"vram_split": "32G"}) == []
    assert (
        "'48GB' is not one of its possible_values (Auto, 512MB"
        in r.problems({"vram_split": "48G"})[0]
    )
    named.axes["vram_split"].driver = "dell-wmi-sysman"
    assert r.problems({"vram_split": "32G"})[0].startswith(
        f"vram_split: firmware attribute '{UMA}' not found under "
        "/sys/class/firmware-attributes/dell-wmi-sysman/attributes"
    )


@pytest.mark.parametrize(
    ("attribute", "value", "expected"),
    [
        ("UmaFrameBufferGB", "32", None),
        ("UmaFrameBufferGB", "30", "30 is not min_value 4 plus a multiple of 4"),
        ("UmaFrameBufferGB", "128", "128 is above its max_value 96"),
        ("UmaFrameBufferGB", "2", "2 is below its min_value 4"),
        ("UmaFrameBufferGB", "32GB", "'32GB' is not an integer"),
        ("AssetTag", "x" * 65, "is not 0-64 characters long"),
    ],
)
def test_problems_with_integer_and_string_attributes(
    tmp_path: Path, attribute: str, value: str, expected: str | None
) -> None:
    root = make_root(tmp_path, "dell-wmi-sysman")
    config = ReconfigureConfig.model_validate(
        {"vram_split": {"firmware_attribute": attribute, "values": {"32G": value}}}
    )
    problems = reconfigurer(tmp_path, root, config).problems({"vram_split": "32G"})
    if expected is None:
        assert problems == []  # no admin password on this Dell: no password file needed
    else:
        prefix = f"vram_split=32G: firmware attribute '{attribute}' (dell-wmi-sysman): "
        assert len(problems) == 1 and problems[0].startswith(prefix) and expected in problems[0]


def test_an_ordered_list_attribute_is_not_supported(tmp_path: Path, hp: Path) -> None:
    config = hp_config(tmp_path)
    config.axes["vram_split"].firmware_attribute = "UEFI Boot Order"
    config.axes["vram_split"].values["32G"] = "USB:1"
    assert reconfigurer(tmp_path, hp, config).problems({"vram_split": "32G"}) == [
        "vram_split=32G: firmware attribute 'UEFI Boot Order' (hp-bioscfg): attributes of type "
        "'ordered-list' are not supported (enumeration, integer, string)"
    ]


def test_problems_with_the_bios_password(tmp_path: Path, hp: Path) -> None:
    config = hp_config(tmp_path)
    path = config.bios_password_file
    assert path is not None
    r = reconfigurer(tmp_path, hp, config)
    path.chmod(0o644)
    assert r.problems({"vram_split": "32G"}) == [
        f"bios_password_file {path} has mode 0644: it must be readable by its owner only "
        "(chmod 600)"
    ]
    path.chmod(0o640)
    assert "has mode 0640" in r.problems({"vram_split": "32G"})[0]
    assert r.problems({"ttm_pages_limit": "8388608"}) == []  # a command needs no BIOS password
    password_file(tmp_path, text="\n")
    assert r.problems({"vram_split": "32G"}) == [f"bios_password_file {path} is empty"]
    path.unlink()
    assert r.problems({"vram_split": "32G"}) == [
        f"bios_password_file {path}: cannot read: No such file or directory"
    ]
    config.bios_password_file = None
    assert r.problems({"vram_split": "32G"}) == [
        "the BIOS has an admin password: set reconfigure.bios_password_file to a file holding "
        "it (mode 600)"
    ]
    (hp / CLASS / "hp-bioscfg/authentication/Setup Password/mechanism").write_text("certificate\n")
    assert r.problems({"vram_split": "32G"}) == [
        "the BIOS admin authentication (Setup Password) uses 'certificate': only password "
        "authentication is supported"
    ]


# -- may_switch --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "clock", "allowed"),
    [
        ("22:00-06:00", "22:00", True),
        ("22:00-06:00", "23:30", True),
        ("22:00-06:00", "00:00", True),
        ("22:00-06:00", "05:59", True),
        ("22:00-06:00", "06:00", False),
        ("22:00-06:00", "12:00", False),
        ("22:00-06:00", "21:59", False),
        ("09:00-17:00", "08:59", False),
        ("09:00-17:00", "09:00", True),
        ("09:00-17:00", "16:59", True),
        ("09:00-17:00", "17:00", False),
    ],
)
def test_allowed_hours(tmp_path: Path, hp: Path, window: str, clock: str, allowed: bool) -> None:
    hour, minute = map(int, clock.split(":"))
    now = datetime(2025, 3, 1, hour, minute, 30)
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path, allowed_hours=window), now=now)
    expected = None if allowed else f"outside reconfigure.allowed_hours {window} (now {clock})"
    assert r.may_switch("c1") == expected


def test_the_reboot_budget_is_per_campaign(tmp_path: Path, hp: Path, events: Events) -> None:
    run = FakeRun(events)
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path, max_reboots_per_campaign=2), run)
    pages = ["1000", "2000", "3000"]
    for n, (before, after) in enumerate(zip(pages, pages[1:], strict=False), start=2):
        r.switch({"ttm_pages_limit": before}, {"ttm_pages_limit": after}, "c1")
        reboot(hp, n)
        assert r.after_boot({"ttm_pages_limit": after}) is not None
    reason = "campaign c1 used its 2 unattended reboot(s) (reconfigure.max_reboots_per_campaign)"
    assert r.may_switch("c1") == reason
    calls = len(run.calls)
    with pytest.raises(ReconfigureError) as info:
        r.switch({"ttm_pages_limit": "3000"}, {"ttm_pages_limit": "1000"}, "c1")
    assert str(info.value) == f"not switching for c1: {reason}"
    assert len(run.calls) == calls  # nothing ran
    assert r.may_switch("c2") is None
    assert r.status()["reboots"] == {"c1": 2}


# -- switch ------------------------------------------------------------------------------


def test_switch_writes_the_password_then_the_value_then_runs_the_commands_then_reboots(
    tmp_path: Path, hp: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    Firmware(hp, events, monkeypatch)
    run = FakeRun(events)
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), run)
    r.switch(
        {"vram_split": "512M", "ttm_pages_limit": "27648000"},
        {"vram_split": "32G", "ttm_pages_limit": "8388608"},
        "c1",
    )
    assert events.items == [
        ("write", HP_PASSWORD, PASSWORD),
        ("write", f"{HP_UMA}/current_value", "32GB"),
        ("run", "/usr/sbin/grubby", "--update-kernel=ALL", "--args=ttm.pages_limit=8388608"),
        ("write", HP_PASSWORD, "\n"),  # the session cleared, as the ABI doc asks
        ("run", "systemctl", "reboot"),  # last
    ]
    assert run.calls[0][1] == 120.0  # the axis's timeout_s
    sysfs = hp / CLASS
    assert (sysfs / HP_UMA / "current_value").read_text() == "32GB"
    assert (sysfs / "hp-bioscfg/attributes/pending_reboot").read_text() == "1\n"
    assert (sysfs / HP_PASSWORD).read_text() == "\n"
    state = journal(tmp_path)
    assert state["pending"]["target"] == {"vram_split": "32G", "ttm_pages_limit": "8388608"}
    assert state["pending"]["stage"] == "rebooting"
    assert state["reboots"] == {"c1": 1}
    assert r.original() == {"vram_split": "512M", "ttm_pages_limit": "27648000"}


def test_the_journal_is_written_before_the_first_change(
    tmp_path: Path, hp: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    Firmware(hp, events, monkeypatch)
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), FakeRun(events))
    r.switch({"vram_split": "512M", "ttm_pages_limit": "1"}, {"vram_split": "32G"}, "c1")
    first = events.journal[0]
    assert first is not None, "nothing was journalled before the password was written"
    assert first["pending"] == {
        "campaign": "c1",
        "previous": {"vram_split": "512M"},
        "target": {"vram_split": "32G"},  # only the changed axis
        "methods": {"vram_split": "firmware"},
        "at": "2025-03-01T23:30:00",
        "boot_id": "6f1c0d6e-boot-1",
        "stage": "applying",
    }
    assert first["reboots"] == {"c1": 1} and first["original"] == {"vram_split": "512M"}
    at_reboot = events.journal[-1]
    assert at_reboot is not None and at_reboot["pending"]["stage"] == "rebooting"
    assert not list((tmp_path / "state").glob("*.tmp"))


def test_a_refused_firmware_write_blocks_the_campaign_and_does_not_reboot(
    tmp_path: Path, hp: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    Firmware(hp, events, monkeypatch).refuse = True
    run = FakeRun(events)
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), run)
    with pytest.raises(ReconfigureError) as info:
        r.switch({"vram_split": "512M"}, {"vram_split": "32G"}, "c1")
    message = (
        "switch into vram_split=32G failed before the reboot: firmware attribute "
        f"'{UMA}' (hp-bioscfg) refused '32GB': Invalid argument"
    )
    assert str(info.value) == message
    assert run.calls == []  # no reboot
    assert events.items[-1] == ("write", HP_PASSWORD, "\n")  # password cleared all the same
    assert r.may_switch("c1") == f"campaign c1 is blocked: {message}"
    assert r.may_switch("c2") is None
    status = r.status()
    assert status["pending"] is None and status["blocked"] == {"c1": message}
    assert (status["last_outcome"], status["last_outcome_ok"]) == (message, False)
    assert status["reboots"] == {"c1": 1}  # the attempt counts


def test_firmware_that_ignores_the_write_is_caught_by_the_read_back(
    tmp_path: Path, hp: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    Firmware(hp, events, monkeypatch).ignore = True
    run = FakeRun(events)
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), run)
    with pytest.raises(ReconfigureError, match="failed before the reboot") as info:
        r.switch({"vram_split": "512M"}, {"vram_split": "32G"}, "c1")
    assert (
        f"firmware attribute '{UMA}' (hp-bioscfg): wrote '32GB' but it reads back '512MB' "
        "(pending_reboot 0): the firmware did not take it"
    ) in str(info.value)
    assert run.calls == []


def test_firmware_that_shows_the_active_value_until_the_boot_is_trusted_to_the_boot(
    tmp_path: Path, hp: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    Firmware(hp, events, monkeypatch).pending_only = True
    run = FakeRun(events)
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), run)
    r.switch({"vram_split": "512M"}, {"vram_split": "32G"}, "c1")
    assert [argv for argv, _ in run.calls] == [["systemctl", "reboot"]]


def test_a_failing_command_puts_the_firmware_back_and_says_why_briefly(
    tmp_path: Path, hp: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    Firmware(hp, events, monkeypatch)
    noise = "".join(f"line {n}\n" for n in range(5000)) + "grubby: error: no kernels found\n"
    run = FakeRun(events, {"/usr/sbin/grubby": CommandResult(1, noise)})
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), run)
    with pytest.raises(ReconfigureError) as info:
        r.switch(
            {"vram_split": "512M", "ttm_pages_limit": "1000"},
            {"vram_split": "32G", "ttm_pages_limit": "2000"},
            "c1",
        )
    message = str(info.value)
    assert message.startswith(
        "switch into vram_split=32G, ttm_pages_limit=2000 failed before the reboot: "
        "ttm_pages_limit=2000: `/usr/sbin/grubby --update-kernel=ALL "
        "--args=ttm.pages_limit=2000` exited 1: line 4996 | "
    )
    assert message.endswith("grubby: error: no kernels found (vram_split put back to 512MB)")
    assert len(message) < 1000
    assert (hp / CLASS / HP_UMA / "current_value").read_text() == "512MB"
    assert events.items[-2:] == [
        ("write", f"{HP_UMA}/current_value", "512MB"),
        ("write", HP_PASSWORD, "\n"),
    ]
    assert ["systemctl", "reboot"] not in [argv for argv, _ in run.calls]


def test_commands_time_out_and_are_undone_with_the_previous_value(
    tmp_path: Path, hp: Path, events: Events
) -> None:
    setter = ["/usr/local/bin/set-carveout", "--size={value}"]
    config = ReconfigureConfig.model_validate(
        {
            "vram_split": {"command": setter},
            "ttm_pages_limit": {"command": GRUBBY, "timeout_s": 30},
        }
    )
    timeout = subprocess.TimeoutExpired(GRUBBY, 30)
    run = FakeRun(events, {"/usr/sbin/grubby": timeout})
    r = reconfigurer(tmp_path, hp, config, run)
    with pytest.raises(ReconfigureError) as info:
        r.switch(
            {"vram_split": "512M", "ttm_pages_limit": "1000"},
            {"vram_split": "32G", "ttm_pages_limit": "2000"},
            "c1",
        )
    assert str(info.value).endswith(
        "ttm_pages_limit=2000: `/usr/sbin/grubby --update-kernel=ALL --args=ttm.pages_limit=2000`"
        " timed out after 30 s (vram_split put back to 512M)"
    )
    assert run.calls == [
        (["/usr/local/bin/set-carveout", "--size=32G"], 120.0),
        (["/usr/sbin/grubby", "--update-kernel=ALL", "--args=ttm.pages_limit=2000"], 30.0),
        (["/usr/local/bin/set-carveout", "--size=512M"], 120.0),
    ]


def test_a_failed_reboot_keeps_the_intent_for_the_next_boot(
    tmp_path: Path, hp: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    Firmware(hp, events, monkeypatch)
    run = FakeRun(events, {"systemctl": CommandResult(1, "Failed to connect to bus\n")})
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), run)
    with pytest.raises(ReconfigureError) as info:
        r.switch({"vram_split": "512M"}, {"vram_split": "32G"}, "c1")
    assert str(info.value) == (
        "switch into vram_split=32G is made but the box did not reboot: reboot: "
        "`systemctl reboot` exited 1: Failed to connect to bus"
    )
    assert journal(tmp_path)["pending"]["stage"] == "rebooting"
    assert r.may_switch("c1") is not None and r.may_switch("c2") is not None  # pending
    reboot(hp)  # the owner reboots by hand
    outcome = r.after_boot({"vram_split": "32G"})
    assert outcome is not None and outcome.ok
    assert r.may_switch("c1") == f"campaign c1 is blocked: {info.value}"


def test_nothing_is_touched_when_the_switch_is_impossible_or_needless(
    tmp_path: Path, hp: Path, events: Events
) -> None:
    run = FakeRun(events)
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), run)
    with pytest.raises(
        ReconfigureError, match=r"^cannot switch into vram_split=64G: vram_split=64G"
    ):
        r.switch({"vram_split": "512M"}, {"vram_split": "64G"}, "c1")
    with pytest.raises(ReconfigureError) as info:
        r.switch({"vram_split": "32G"}, {"vram_split": "32g"}, "c1")
    assert str(info.value) == "the box is already in vram_split=32G: nothing to switch"
    assert run.calls == [] and not (tmp_path / "state").exists()


def test_a_value_the_attribute_already_holds_is_neither_written_nor_put_back(
    tmp_path: Path, hp: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    (hp / CLASS / HP_UMA / "current_value").write_text("32GB\n")  # set earlier, not booted yet
    Firmware(hp, events, monkeypatch)
    run = FakeRun(events, {"/usr/sbin/grubby": CommandResult(1, "no kernels\n")})
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), run)
    with pytest.raises(ReconfigureError) as info:
        r.switch(
            {"vram_split": "512M", "ttm_pages_limit": "1000"},
            {"vram_split": "32G", "ttm_pages_limit": "2000"},
            "c1",
        )
    assert str(info.value).endswith("exited 1: no kernels")  # no "put back" note
    assert [e for e in events.items if e[1].endswith("/current_value")] == []


def test_an_integer_attribute_without_admin_password(
    tmp_path: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_root(tmp_path, "dell-wmi-sysman")
    Firmware(root, events, monkeypatch)
    config = ReconfigureConfig.model_validate(
        {
            "vram_split": {
                "firmware_attribute": "UmaFrameBufferGB",
                "values": {"4G": "4", "32G": "32"},
            }
        }
    )
    r = reconfigurer(tmp_path, root, config, FakeRun(events))
    r.switch({"vram_split": "4G"}, {"vram_split": "32G"}, "c1")
    assert events.items == [
        ("write", "dell-wmi-sysman/attributes/UmaFrameBufferGB/current_value", "32"),
        ("run", "systemctl", "reboot"),
    ]


# -- after the reboot --------------------------------------------------------------------


def test_after_boot_confirms_a_switch_that_took(
    tmp_path: Path, hp: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    Firmware(hp, events, monkeypatch)
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), FakeRun(events))
    assert r.after_boot({"vram_split": "512M"}) is None  # nothing pending, no journal yet
    r.switch({"vram_split": "512M", "ttm_pages_limit": "1"}, {"vram_split": "32G"}, "c1")
    reboot(hp)
    outcome = r.after_boot({"vram_split": "32 GiB", "ttm_pages_limit": "5"})  # other axes ignored
    assert outcome is not None
    assert (outcome.ok, outcome.campaign, outcome.target, outcome.detected) == (
        True, "c1", {"vram_split": "32G"}, {"vram_split": "32G"}
    )  # fmt: skip
    assert outcome.message == "rebooted into vram_split=32G for c1 as intended"
    assert r.after_boot({"vram_split": "32G"}) is None  # cleared
    assert r.may_switch("c1") is None
    status = r.status()
    assert status["pending"] is None and status["last_outcome_ok"] is True
    json.dumps(status)


def test_a_switch_that_did_not_take_blocks_its_campaign_for_good(
    tmp_path: Path, hp: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    Firmware(hp, events, monkeypatch)
    run = FakeRun(events)
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), run)
    r.switch({"vram_split": "512M"}, {"vram_split": "32G"}, "c1")
    reboot(hp)
    outcome = r.after_boot({"vram_split": "512M"})
    message = (
        "reboot into vram_split=32G did not take: the box came back in vram_split=512M "
        "(firmware ignored the write?)"
    )
    assert outcome is not None and not outcome.ok and outcome.message == message
    assert r.may_switch("c1") == f"campaign c1 is blocked: {message}"
    calls = len(run.calls)
    with pytest.raises(ReconfigureError, match="campaign c1 is blocked"):
        r.switch({"vram_split": "512M"}, {"vram_split": "32G"}, "c1")
    assert len(run.calls) == calls  # no second reboot: no loop
    reboot(hp, 3)
    assert r.after_boot({"vram_split": "512M"}) is None
    assert r.status()["blocked"] == {"c1": message}


def test_after_boot_names_a_kernel_parameter_that_did_not_take_and_a_missing_reading(
    tmp_path: Path, hp: Path, events: Events
) -> None:
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), FakeRun(events))
    r.switch({"ttm_pages_limit": "1000"}, {"ttm_pages_limit": "2000"}, "c1")
    reboot(hp)
    outcome = r.after_boot({})
    assert outcome is not None and outcome.message == (
        "reboot into ttm_pages_limit=2000 did not take: the box came back in "
        "ttm_pages_limit=unknown (the kernel command line not updated?)"
    )


def test_after_boot_waits_for_an_actual_reboot(tmp_path: Path, hp: Path, events: Events) -> None:
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), FakeRun(events))
    r.switch({"ttm_pages_limit": "1000"}, {"ttm_pages_limit": "2000"}, "c1")
    assert r.after_boot({"ttm_pages_limit": "1000"}) is None  # agent restarted, same boot
    assert r.may_switch("c2") == (
        "a switch into ttm_pages_limit=2000 for c1 is pending since 2025-03-01T23:30:00: "
        "the box has not rebooted since"
    )
    reboot(hp)
    outcome = r.after_boot({"ttm_pages_limit": "2000"})
    assert outcome is not None and outcome.ok


def test_an_agent_killed_while_applying_is_reported_after_the_boot(
    tmp_path: Path, hp: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    Firmware(hp, events, monkeypatch).interrupt = True
    run = FakeRun(events)
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), run)
    with pytest.raises(KeyboardInterrupt):
        r.switch({"vram_split": "512M"}, {"vram_split": "32G"}, "c1")
    assert run.calls == [] and events.items[-1] == ("write", HP_PASSWORD, "\n")
    reboot(hp)
    outcome = r.after_boot({"vram_split": "512M"})
    assert outcome is not None and outcome.message.endswith(
        "(the agent stopped before its reboot command; firmware ignored the write?)"
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "(not JSON (Expecting property name"),
        ('{"version": 1, "reboots": {"c1": "many"}}', "(reboots.c1: Input should be a valid"),
        ("[]", "(top level: Input should be a valid dictionary"),
    ],
)
def test_a_corrupt_journal_turns_switching_off_and_says_so(
    tmp_path: Path, hp: Path, events: Events, text: str, why: str
) -> None:
    state = tmp_path / "state" / "reconfigure.state"
    state.parent.mkdir()
    state.write_text(text)
    run = FakeRun(events)
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path), run)
    with pytest.raises(ReconfigureError) as info:
        r.after_boot({"vram_split": "512M"})
    message = str(info.value)
    assert message.startswith(f"{state} is corrupt {why}")
    assert "unattended reconfiguration is off until it is fixed or removed" in message
    assert r.may_switch("c1") == message
    assert r.status()["error"] == message and "reboots" not in r.status()
    assert r.original() is None  # nothing to restore to while the journal is unreadable
    with pytest.raises(ReconfigureError, match="is corrupt"):
        r.switch({"vram_split": "512M"}, {"vram_split": "32G"}, "c1")
    assert run.calls == [] and state.read_text() == text  # kept for the owner to look at


def test_a_journal_from_a_newer_orch_is_not_guessed_at(tmp_path: Path, hp: Path) -> None:
    state = tmp_path / "state" / "reconfigure.state"
    state.parent.mkdir()
    state.write_text('{"version": 99, "future": true}')
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path))
    with pytest.raises(ReconfigureError, match=r"written by a newer orch \(state version 99"):
        r.after_boot({})


def test_the_original_configuration_is_the_first_one_until_restored(
    tmp_path: Path, hp: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    Firmware(hp, events, monkeypatch)
    r = reconfigurer(tmp_path, hp, hp_config(tmp_path, restore=True), FakeRun(events))
    assert r.original() is None
    r.switch({"vram_split": "512M"}, {"vram_split": "32G"}, "c1")
    reboot(hp, 2)
    r.after_boot({"vram_split": "32G"})
    r.switch({"vram_split": "32G", "ttm_pages_limit": "1000"}, {"ttm_pages_limit": "2000"}, "c1")
    reboot(hp, 3)
    r.after_boot({"vram_split": "32G", "ttm_pages_limit": "2000"})
    r.switch({"vram_split": "32G"}, {"vram_split": "48G"}, "c1")
    assert r.original() == {"vram_split": "512M", "ttm_pages_limit": "1000"}
    status = r.status()
    assert status["restore"] is True and status["original"] == r.original()
    assert status["values"] == {"vram_split": ["512M", "24G", "32G", "48G"]}
    assert status["axes"] == ["vram_split", "ttm_pages_limit"]
    r.restored()
    assert r.original() is None


# -- the password ------------------------------------------------------------------------


def test_the_password_appears_nowhere(
    tmp_path: Path,
    hp: Path,
    events: Events,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator = Firmware(hp, events, monkeypatch)
    run = FakeRun(events, {"systemctl": CommandResult(1, "")})
    config = hp_config(tmp_path)
    r = reconfigurer(tmp_path, hp, config, run)
    texts: list[str] = []
    with pytest.raises(ReconfigureError) as failed_reboot:
        r.switch({"vram_split": "512M"}, {"vram_split": "32G"}, "c1")
    texts.append(str(failed_reboot.value))
    reboot(hp)
    texts.append(repr(r.after_boot({"vram_split": "512M"})))
    emulator.refuse = True
    with pytest.raises(ReconfigureError) as refused:
        r.switch({"vram_split": "32G"}, {"vram_split": "48G"}, "c2")
    texts.append(str(refused.value))
    assert config.bios_password_file is not None
    config.bios_password_file.chmod(0o644)
    texts += r.problems({"vram_split": "32G"})
    texts += [repr(r), repr(config), json.dumps(r.status()), repr(Secret(PASSWORD))]
    texts.append(caplog.text)
    texts += [" ".join(argv) for argv, _ in run.calls]
    texts += [p.read_text() for p in (tmp_path / "state").iterdir()]
    texts += [json.dumps(state) for state in events.journal]  # the journal at every step
    texts += [p.read_text() for p in (hp / CLASS).rglob("*") if p.is_file()]
    assert ("write", HP_PASSWORD, PASSWORD) in events.items  # it was used...
    assert len(texts) > 10 and caplog.records
    assert not [t for t in texts if PASSWORD in t]  # ...and is nowhere else


# -- the real runner ---------------------------------------------------------------------


def test_run_argv_runs_without_a_shell_and_bounds_its_time() -> None:
    result = run_argv([sys.executable, "-c", "print('out'); import sys; sys.exit(3)", "$HOME"], 30)
    assert result == CommandResult(3, "out\n")
    with pytest.raises(subprocess.TimeoutExpired):
        run_argv([sys.executable, "-c", "import time; time.sleep(5)"], 0.2)
