"""The one rule for "waits for a human": reboots, offline hosts, unattended boxes; the order a
box visits its configurations and the reboots that takes."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.inventory import ReconfigureInfo, WorkerInventory
from jobs.protocol import ONLINE_WITHIN_S, REBOOT_GRACE_S
from jobs.spec import (
    JobSpec,
    configuration_label,
    configuration_of_queue,
    queue_name,
    reconfiguration_sequence,
)
from orchestrator.waiting import blocked_notes, blocked_on, reboot_plan, reboots_needed

NOW = 1_000_000.0
SMALL, BIG = {"vram_split": "512M"}, {"vram_split": "32G"}


def _job(configuration: dict[str, str], campaign: str = "c", context: int = 64) -> JobSpec:
    return JobSpec(campaign=campaign, host="halo", engine="llama-bench", model="m",
                   backend="cpu", context=context, configuration=configuration)  # fmt: skip


def _inv(configuration: dict[str, str], **extra: Any) -> WorkerInventory:
    fields: dict[str, Any] = dict(
        host="halo", queue=queue_name("halo", configuration), configuration=configuration,
        version="t", instance_id="i", pid=1, started_at=0, last_seen=NOW,
    )  # fmt: skip
    fields.update(extra)
    return WorkerInventory(**fields)


@pytest.mark.parametrize(
    "configuration",
    [{}, SMALL, {"vram_split": "96G", "ttm_pages_limit": "27648000"}, {"ttm_pages_limit": "1"}],
)
def test_a_queue_name_gives_back_its_configuration(configuration: dict[str, str]) -> None:
    assert configuration_of_queue(queue_name("laptop-80w.x", configuration)) == configuration


def test_configuration_label_is_one_spelling() -> None:
    assert configuration_label({"ttm_pages_limit": "5", "vram_split": "32G"}) == (
        "vram_split=32G, ttm_pages_limit=5"
    )
    assert configuration_label({}) == "no vram_split"


def test_sequence_starts_where_the_box_is_and_visits_each_configuration_once() -> None:
    mid = {"vram_split": "4G"}
    pending = [BIG, SMALL, mid, BIG, SMALL]
    assert reconfiguration_sequence(mid, pending) == [mid, SMALL, BIG]
    assert reconfiguration_sequence({"vram_split": "96G"}, pending) == [SMALL, mid, BIG]
    ttm = [
        {"vram_split": "512M", "ttm_pages_limit": "2"},
        {"vram_split": "512M", "ttm_pages_limit": "1"},
    ]
    assert reconfiguration_sequence({}, ttm) == [ttm[1], ttm[0]]
    labels = [configuration_label(c) for c in reconfiguration_sequence(mid, pending)]
    assert reboots_needed(labels, configuration_label(mid)) == 2
    assert reboots_needed(labels, configuration_label({"vram_split": "96G"})) == 3
    assert reboots_needed([], "x") == 0


def test_jobs_in_the_current_configuration_of_an_online_host_wait_by_themselves() -> None:
    assert blocked_on(_job(SMALL), _inv(SMALL), NOW) is None


def test_a_job_for_another_carve_out_waits_for_a_reboot() -> None:
    blocked = blocked_on(_job(BIG), _inv(SMALL), NOW)
    assert blocked is not None and blocked.kind == "reboot"
    notes = blocked_notes([_job(BIG), _job(BIG, context=128)], {"halo": _inv(SMALL)}, NOW)
    assert notes == [
        "halo: 2 job(s) wait for vram_split=32G (now vram_split=512M) — reboot into "
        "vram_split=32G and start its worker again"
    ]


def test_an_offline_or_unknown_host_waits_for_a_human() -> None:
    stale = _inv(SMALL, last_seen=NOW - ONLINE_WITHIN_S - 1)
    assert blocked_on(_job(SMALL), stale, NOW).kind == "offline"  # type: ignore[union-attr]
    assert blocked_on(_job(SMALL), _inv(SMALL, stopped=True), NOW).kind == "offline"  # type: ignore[union-attr]
    assert blocked_on(_job(SMALL), None, NOW).kind == "unknown host"  # type: ignore[union-attr]


def test_a_box_that_switches_itself_keeps_the_wait_going_until_it_cannot() -> None:
    info = ReconfigureInfo(axes=["vram_split"], values={"vram_split": ["512M", "32G"]},
                           max_reboots_per_campaign=2)  # fmt: skip
    assert blocked_on(_job(BIG), _inv(SMALL, reconfigure=info), NOW) is None
    # a value its owner did not map
    other = blocked_on(_job({"vram_split": "96G"}), _inv(SMALL, reconfigure=info), NOW)
    assert other is not None and "not 96G" in other.why
    # an axis it may not switch
    ttm = blocked_on(_job({**BIG, "ttm_pages_limit": "9"}), _inv(SMALL, reconfigure=info), NOW)
    assert ttm is not None and "ttm_pages_limit" in ttm.why
    # a failed attempt blocks that campaign only
    failed = info.model_copy(update={"blocked": {"c": "reboot into vram_split=32G did not take"}})
    blocked = blocked_on(_job(BIG), _inv(SMALL, reconfigure=failed), NOW)
    assert blocked is not None and blocked.why == "reboot into vram_split=32G did not take"
    assert blocked_on(_job(BIG, campaign="d"), _inv(SMALL, reconfigure=failed), NOW) is None
    note = blocked_notes([_job(BIG)], {"halo": _inv(SMALL, reconfigure=failed)}, NOW)[0]
    assert note.endswith("it will not switch by itself: reboot into vram_split=32G did not take")
    # the reboot budget
    spent = info.model_copy(update={"reboots": {"c": 2}})
    assert blocked_on(_job(BIG), _inv(SMALL, reconfigure=spent), NOW) is not None


def test_a_box_rebooting_by_itself_is_expected_back_for_a_while() -> None:
    gone = NOW - ONLINE_WITHIN_S - 60
    info = ReconfigureInfo(axes=["vram_split"], rebooting_into=BIG, rebooting_since=gone)
    assert blocked_on(_job(BIG), _inv(SMALL, reconfigure=info, last_seen=gone), NOW) is None
    late = NOW + REBOOT_GRACE_S
    assert blocked_on(_job(BIG), _inv(SMALL, reconfigure=info, last_seen=gone), late) is not None


def test_reboot_plan_per_host() -> None:
    plan = reboot_plan([_job(BIG), _job(SMALL), _job(BIG)], {"halo": _inv(SMALL)})
    assert plan == {"halo": ["vram_split=512M", "vram_split=32G"]}


def test_a_box_that_says_it_is_stalled_waits_for_a_human() -> None:
    stalled = "cannot switch into vram_split=32G: password file mode 644"
    info = ReconfigureInfo(axes=["vram_split"], stalled=stalled)
    blocked = blocked_on(_job(BIG), _inv(SMALL, reconfigure=info), NOW)
    assert blocked is not None and blocked.why.endswith("password file mode 644")
    # jobs of its current configuration still run
    assert blocked_on(_job(SMALL), _inv(SMALL, reconfigure=info), NOW) is None
