"""The engine-option rule both sides apply, and the JobSpec fields it reads."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.engineoptions import job_option_problem, option_mismatch, option_refusal
from jobs.spec import JobSpec


def _job(**kw: object) -> JobSpec:
    return JobSpec(campaign="c", host="h", engine=kw.pop("engine", "llama-bench"), model="m",
                   backend="vulkan", context=512, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_unset_options_keep_old_ids_and_set_ones_change_them() -> None:
    plain = _job()
    assert _job(flash_attention=None, kv_offload=None, think=None).job_id == plain.job_id
    variants = [_job(flash_attention="on"), _job(flash_attention="off"), _job(kv_offload=False)]
    assert len({plain.job_id, *(j.job_id for j in variants)}) == 4
    assert "flash_attention" not in plain.axes()


@pytest.mark.parametrize(("given", "kept"), [(True, "on"), ("off", "off"), ("ON", "on"),
                                             (False, "off")])  # fmt: skip
def test_switches_read_yaml_booleans_and_words(given: object, kept: str) -> None:
    assert _job(flash_attention=given).flash_attention == kept


def test_auto_and_nonsense_are_refused() -> None:
    with pytest.raises(ValidationError, match="leave the axis out"):
        _job(flash_attention="auto")
    with pytest.raises(ValidationError, match="not on or off"):
        _job(think="maybe")


def test_the_worker_refuses_what_its_engine_cannot_apply() -> None:
    assert job_option_problem(_job(flash_attention="on", kv_offload=True)) is None
    problem = job_option_problem(_job(engine="ollama", kv_offload=True))
    assert problem is not None and problem.startswith("ollama cannot set kv_offload per job")
    assert job_option_problem(_job(engine="ollama", think="on")) is None
    assert option_refusal("openai", "think") is not None
    assert "unknown-engine cannot set think" in str(option_refusal("unknown-engine", "think"))


def test_a_mismatch_names_both_values_and_the_source() -> None:
    job = _job(flash_attention="on", kv_offload=False)
    agree = {"flash_attention": "on", "kv_offload": False}
    assert option_mismatch(job, agree, "x") is None
    assert option_mismatch(job, {"flash_attention": None, "kv_offload": None}, "x") is None
    said = option_mismatch(job, {"flash_attention": "auto", "kv_offload": True}, "the log")
    assert said == (
        "llama-bench ran with flash_attention auto, not the job's on; kv_offload true, not "
        "the job's false (the log)"
    )
