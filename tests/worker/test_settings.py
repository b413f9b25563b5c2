"""Runtime setters against copies of real boxes' sysfs trees (tests/fixtures/facts), and the
command method against a real program: applied before the job, read back, restored after."""

from __future__ import annotations

import json
import re
import shutil
import stat
import sys
from pathlib import Path

import pytest

from worker.config import SetterConfig, WorkerConfig
from worker.settings import (
    RuntimeSettings,
    SettingError,
    build_setters,
    recover_settings,
    registered_setters,
)

FACTS = Path(__file__).resolve().parent.parent / "fixtures" / "facts"
PROFILE = "sys/firmware/acpi/platform_profile"
CAP = "sys/class/drm/card0/device/hwmon/hwmon2/power1_cap"


@pytest.fixture
def halo(tmp_path: Path) -> Path:
    """A writable copy of the Strix Halo tree (platform profile: performance)."""
    root = tmp_path / "halo"
    shutil.copytree(FACTS / "strix-halo" / "root" / "sys" / "firmware", root / "sys" / "firmware")
    return root


@pytest.fixture
def dgpu(tmp_path: Path) -> Path:
    """A writable copy of the RX 7900 XTX tree (power1_cap 339 W, bounds 0-402 W)."""
    root = tmp_path / "dgpu"
    shutil.copytree(FACTS / "radeon-dgpu" / "root" / "sys", root / "sys", symlinks=True)
    return root


def test_platform_profile_is_applied_read_back_and_restored(halo: Path) -> None:
    setters = build_setters({"platform_profile": SetterConfig()}, halo)
    assert setters["platform_profile"].info().choices == ["low-power", "balanced", "performance"]
    with RuntimeSettings(setters, {"platform_profile": "low-power"}) as applied:
        assert (halo / PROFILE).read_text().strip() == "low-power"  # during the job
    assert (halo / PROFILE).read_text().strip() == "performance"  # after it
    record = applied.record["platform_profile"]
    assert (record.requested, record.previous, record.read_back) == (
        "low-power", "performance", "low-power"
    )  # fmt: skip
    assert record.changed and record.restored and record.method == "sysfs"


def test_a_setting_already_in_place_is_left_alone(halo: Path) -> None:
    setters = build_setters({"platform_profile": SetterConfig()}, halo)
    with RuntimeSettings(setters, {"platform_profile": "performance"}) as applied:
        pass
    record = applied.record["platform_profile"]
    assert not record.changed and record.restored is None


def test_values_outside_the_owners_bounds_or_the_firmwares_choices_are_refused(
    halo: Path, dgpu: Path
) -> None:
    profile = build_setters({"platform_profile": SetterConfig()}, halo)
    with pytest.raises(SettingError, match="'turbo' is not one of low-power, balanced"):
        RuntimeSettings(profile, {"platform_profile": "turbo"}).__enter__()
    power = build_setters({"power_limit_w": SetterConfig(method="hwmon", min_w=200)}, dgpu)
    # the owner allows 200 W and up, the driver at most 402 W
    assert power["power_limit_w"].info().min_w == 200 and power["power_limit_w"].info().max_w == 402
    with pytest.raises(SettingError, match="150 W is outside the allowed 200-402 W"):
        RuntimeSettings(power, {"power_limit_w": "150"}).__enter__()
    assert (dgpu / CAP).read_text().strip() == "339000000"  # untouched


def test_a_setting_the_config_does_not_list_is_never_touched(halo: Path) -> None:
    with pytest.raises(SettingError, match="platform_profile is not settable on this box"):
        RuntimeSettings({}, {"platform_profile": "low-power"}).__enter__()
    assert (halo / PROFILE).read_text().strip() == "performance"


def test_hwmon_power_cap_in_microwatts(dgpu: Path) -> None:
    setters = build_setters({"power_limit_w": SetterConfig(method="hwmon")}, dgpu)
    with RuntimeSettings(setters, {"power_limit_w": "250"}) as applied:
        assert (dgpu / CAP).read_text().strip() == "250000000"
    assert (dgpu / CAP).read_text().strip() == "339000000"
    record = applied.record["power_limit_w"]
    assert (record.previous, record.read_back, record.restored) == ("339", "250", True)


def test_a_value_that_does_not_stick_fails_the_job_and_the_rest_is_restored(
    halo: Path, dgpu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Firmware that ignores the write (as some do when on battery): it reads back the old value.
    root = dgpu
    shutil.copytree(halo / "sys" / "firmware", root / "sys" / "firmware")
    setters = build_setters(
        {"platform_profile": SetterConfig(), "power_limit_w": SetterConfig(method="hwmon")}, root
    )
    monkeypatch.setattr(type(setters["power_limit_w"]), "apply", lambda self, value: None)
    settings = RuntimeSettings(setters, {"platform_profile": "balanced", "power_limit_w": "200"})
    with pytest.raises(SettingError, match="set '200', but the box reads back '339'"):
        settings.__enter__()
    # platform_profile was applied first (sorted), and was put back before the error surfaced
    assert (root / PROFILE).read_text().strip() == "performance"
    assert settings.record["platform_profile"].restored is True


def test_command_method_runs_the_owners_program_with_the_value_filled_in(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    tool = tmp_path / "fake-ryzenadj"  # stands in for ryzenadj, which needs a Ryzen APU and root
    tool.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"  # noqa: E501
    )
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    config = SetterConfig(
        method="command", command=[str(tool), "--stapm-limit={mw}", "--fast-limit={mw}"],
        restore_w=120, min_w=45, max_w=140,
    )  # fmt: skip
    setters = build_setters({"power_limit_w": config}, tmp_path)
    with RuntimeSettings(setters, {"power_limit_w": "45"}) as applied:
        assert log.read_text().splitlines() == ["--stapm-limit=45000 --fast-limit=45000"]
    assert log.read_text().splitlines()[-1] == "--stapm-limit=120000 --fast-limit=120000"
    record = applied.record["power_limit_w"]
    assert record.read_back is None and record.restored is True  # set, but not readable


def test_command_failure_names_the_command_and_its_words(tmp_path: Path) -> None:
    tool = tmp_path / "fails"
    tool.write_text(f"#!{sys.executable}\nimport sys\nsys.exit('Only root can do this')\n")
    tool.chmod(0o755)
    config = SetterConfig(
        method="command", command=[str(tool), "{w}"], restore_w=80, min_w=10, max_w=100
    )
    setters = build_setters({"power_limit_w": config}, tmp_path)
    with pytest.raises(SettingError, match="exited 1: Only root can do this"):
        RuntimeSettings(setters, {"power_limit_w": "60"}).__enter__()


@pytest.mark.parametrize(
    ("setters", "message"),
    [
        ({"fan_speed": {}}, "not a runtime setting"),
        ({"platform_profile": {"method": "hwmon"}}, "does not set it (use sysfs)"),
        ({"power_limit_w": {"method": "command", "command": ["x"]}}, "needs `command`"),
        (
            {
                "power_limit_w": {
                    "method": "command",
                    "command": ["x", "{cmd}"],
                    "restore_w": 1,
                    "min_w": 1,
                    "max_w": 2,
                }
            },
            "only {w}, {mw} and {uw}",
        ),
        ({"power_limit_w": {"method": "hwmon", "restore_w": 80}}, "belong to method command"),
        (
            {"power_limit_w": {"method": "command", "command": ["x", "{w}"], "restore_w": 80}},
            "needs `min_w` and `max_w`",
        ),
        ({"power_limit_w": {"method": "hwmon", "max_w": "inf"}}, "finite number"),
    ],
)
def test_worker_config_refuses_unsafe_or_incomplete_setters(
    setters: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        WorkerConfig.model_validate({"host": "h", "setters": setters})


@pytest.mark.parametrize(("axis", "method"), registered_setters())
def test_every_registered_setter_reads_applies_and_restores(
    axis: str, method: str, halo: Path, dgpu: Path, tmp_path: Path
) -> None:
    """The family test: each member against its real-shaped tree (or program)."""
    log = tmp_path / "calls.txt"
    tool = tmp_path / "set-limit"
    tool.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(log)!r}, 'a').write(sys.argv[1] + '\\n')\n"
    )
    tool.chmod(0o755)
    config, root, value = {
        ("platform_profile", "sysfs"): (SetterConfig(), halo, "balanced"),
        ("power_limit_w", "hwmon"): (SetterConfig(method="hwmon"), dgpu, "300"),
        ("power_limit_w", "command"): (
            SetterConfig(method="command", command=[str(tool), "{w}"], restore_w=120,
                         min_w=45, max_w=140),
            tmp_path, "45",
        ),
    }[(axis, method)]  # fmt: skip
    setters = build_setters({axis: config}, root)
    before = setters[axis].read()
    with RuntimeSettings(setters, {axis: value}) as applied:
        assert setters[axis].read() in (value, None)  # None: a command cannot be read back
    record = applied.record[axis]
    assert record.changed and record.restored is True and record.error is None
    assert setters[axis].read() == before


def test_a_killed_worker_leaves_a_journal_that_the_next_agent_replays(halo: Path) -> None:
    setters = build_setters({"platform_profile": SetterConfig()}, halo)
    journal = halo / "spool" / "settings.restore"
    settings = RuntimeSettings(setters, {"platform_profile": "low-power"}, journal=journal)
    settings.__enter__()  # ... and the worker is SIGKILLed mid-job: __exit__ never runs
    assert (halo / PROFILE).read_text().strip() == "low-power"
    assert json.loads(journal.read_text()) == {"platform_profile": "performance"}
    assert recover_settings(setters, journal) == {"platform_profile": None}
    assert (halo / PROFILE).read_text().strip() == "performance" and not journal.exists()
    assert recover_settings(setters, journal) == {}  # nothing left to do


def test_a_restore_that_does_not_stick_is_recorded_as_failed(
    halo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setters = build_setters({"platform_profile": SetterConfig()}, halo)
    journal = halo / "settings.restore"
    with RuntimeSettings(setters, {"platform_profile": "low-power"}, journal=journal) as applied:
        # firmware that locks the profile while the job runs (ignores the write back)
        monkeypatch.setattr(type(setters["platform_profile"]), "apply", lambda self, v: None)
    record = applied.record["platform_profile"]
    assert record.restored is False
    assert record.error == "restored 'performance', but the box reads back 'low-power'"
    assert journal.exists()  # the next agent tries again


def test_with_several_capped_cards_the_owner_must_name_one(dgpu: Path) -> None:
    drm = dgpu / "sys" / "class" / "drm"
    shutil.copytree(drm / "card0", drm / "card1", symlinks=True)  # a second capped GPU
    setters = build_setters({"power_limit_w": SetterConfig(method="hwmon")}, dgpu)
    with pytest.raises(SettingError, match=r"several cards have a power1_cap \(card0, card1\)"):
        RuntimeSettings(setters, {"power_limit_w": "250"}).__enter__()
    named = build_setters({"power_limit_w": SetterConfig(method="hwmon", card="card1")}, dgpu)
    with RuntimeSettings(named, {"power_limit_w": "250"}):
        assert (drm / "card1/device/hwmon/hwmon2/power1_cap").read_text().strip() == "250000000"
        assert (dgpu / CAP).read_text().strip() == "339000000"  # card0 untouched
