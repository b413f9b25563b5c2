"""When the agent switches its box by itself (worker/unattended.py): against a real Valkey with
real Celery messages, and a recording reconfigurer in place of the firmware."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from jobs.spec import JobSpec
from orchestrator.broker import Publisher
from worker.config import WorkerConfig
from worker.unattended import Unattended

SMALL, BIG = {"vram_split": "512M"}, {"vram_split": "32G"}


class FakeReconfigurer:
    """Records switches; says what the real one would refuse."""

    axes = ("vram_split",)

    def __init__(self) -> None:
        self.switches: list[tuple[dict[str, str], dict[str, str], str]] = []
        self.problem: str | None = None
        self.refusal: str | None = None
        self._original: dict[str, str] | None = None

    def problems(self, target: Any, current: Any = None) -> list[str]:
        return [self.problem] if self.problem else []

    def may_switch(self, campaign: str) -> str | None:
        return self.refusal

    def switch(self, current: Any, target: Any, campaign: str) -> None:
        self.switches.append((dict(current), dict(target), campaign))
        self._original = self._original or {"vram_split": current["vram_split"]}

    def after_boot(self, detected: Any) -> None:
        return None

    def original(self) -> dict[str, str] | None:
        return self._original

    def restored(self) -> None:
        self._original = None

    def status(self) -> dict[str, Any]:
        return {"values": {"vram_split": ["512M", "32G"]}}


def _declared_after_detection(restore: bool) -> WorkerConfig:
    # `declared:` may not name a switched axis; the agent fills it from detection at start.
    config = WorkerConfig.model_validate(
        {
            "host": "halo",
            "reconfigure": {
                "vram_split": {"firmware_attribute": "UMA", "values": {"512M": "a", "32G": "b"}},
                "restore": restore,
            },
        }
    )
    config.declared.vram_split = "512M"
    return config


def _job(configuration: dict[str, str], campaign: str = "c", context: int = 64) -> JobSpec:
    return JobSpec(campaign=campaign, host="halo", engine="llama-bench", model="m",
                   backend="cpu", context=context, configuration=configuration)  # fmt: skip


def _publish(broker: str, *jobs: JobSpec) -> None:
    publisher = Publisher(broker)
    try:
        for job in jobs:
            publisher.publish(job)
    finally:
        publisher.close()


@pytest.fixture
def unattended(redis_client: Any) -> tuple[Unattended, FakeReconfigurer, list[int]]:
    reconfigurer = FakeReconfigurer()
    published: list[int] = []
    agent = Unattended(
        _declared_after_detection(False), reconfigurer, redis_client,  # type: ignore[arg-type]
        broker_now=lambda: 1000.0, publish=lambda: published.append(len(reconfigurer.switches)),
    )  # fmt: skip
    return agent, reconfigurer, published


def test_switches_only_after_two_idle_heartbeats_into_the_waiting_configuration(
    broker: str, unattended: Any
) -> None:
    agent, reconfigurer, published = unattended
    _publish(broker, _job(BIG), _job(BIG, context=128))
    assert agent.tick() is False  # one idle look is not enough
    assert agent.tick() is True
    assert reconfigurer.switches == [(SMALL, BIG, "c")]
    assert published == [0]  # the inventory went out before the switch began
    assert agent.info().rebooting_into == BIG
    assert agent.tick() is False and len(reconfigurer.switches) == 1  # no second switch


def test_no_switch_while_work_remains_here_or_a_job_runs(broker: str, redis_client: Any) -> None:
    reconfigurer = FakeReconfigurer()
    busy = threading.Event()
    agent = Unattended(
        _declared_after_detection(False), reconfigurer, redis_client,  # type: ignore[arg-type]
        broker_now=lambda: 1000.0, is_busy=busy.is_set,
    )  # fmt: skip
    _publish(broker, _job(SMALL), _job(BIG))
    assert [agent.tick() for _ in range(4)] == [False] * 4  # its own queue has a job
    redis_client.delete("orch.halo.vram-512M")
    busy.set()
    assert [agent.tick() for _ in range(4)] == [False] * 4  # a job runs
    busy.clear()
    assert [agent.tick(), agent.tick()] == [False, True]
    assert reconfigurer.switches[0][1] == BIG


def test_junk_in_a_queue_never_reboots_the_box(redis_client: Any, unattended: Any) -> None:
    agent, reconfigurer, _ = unattended
    redis_client.lpush("orch.halo.vram-32G", b"not json")
    redis_client.lpush("orch.halo.ttm-1", b'{"body": "e30=", "properties": {}}')
    assert [agent.tick() for _ in range(3)] == [False] * 3
    assert reconfigurer.switches == []


def test_a_refusal_is_published_so_waiting_coordinators_stop(broker: str, unattended: Any) -> None:
    agent, reconfigurer, _ = unattended
    reconfigurer.problem = "bios-password: readable by others (chmod 600)"
    _publish(broker, _job(BIG))
    assert [agent.tick(), agent.tick()] == [False, False]
    assert agent.info().stalled == (
        "cannot switch into vram_split=32G: bios-password: readable by others (chmod 600)"
    )
    reconfigurer.problem = None
    assert agent.tick() is True and agent.info().stalled is None


def test_restore_goes_back_to_where_the_box_started_once_nothing_waits(
    redis_client: Any,
) -> None:
    reconfigurer = FakeReconfigurer()
    config = _declared_after_detection(True)
    config.declared.vram_split = "32G"  # switched earlier from 512M
    reconfigurer._original = dict(SMALL)
    agent = Unattended(config, reconfigurer, redis_client, broker_now=lambda: 1.0)  # type: ignore[arg-type]
    assert [agent.tick(), agent.tick()] == [False, True]
    assert reconfigurer.switches == [(BIG, SMALL, "restore")]


def test_a_box_back_where_it_started_forgets_its_original(redis_client: Any) -> None:
    reconfigurer = FakeReconfigurer()
    reconfigurer._original = dict(SMALL)
    agent = Unattended(_declared_after_detection(True), reconfigurer, redis_client,  # type: ignore[arg-type]
                       broker_now=lambda: 1.0)  # fmt: skip
    assert [agent.tick(), agent.tick()] == [False, False]
    assert reconfigurer.original() is None and reconfigurer.switches == []


def test_declaring_an_axis_the_agent_switches_is_refused() -> None:
    with pytest.raises(ValueError, match="declared.vram_split: the agent switches it itself"):
        WorkerConfig.model_validate(
            {"host": "h", "declared": SMALL,
             "reconfigure": {"vram_split": {"firmware_attribute": "UMA", "values": {"32G": "b"}}}}
        )  # fmt: skip
