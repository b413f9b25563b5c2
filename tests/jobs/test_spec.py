"""JobSpec: its deterministic id, its queue, and the VRAM-size normalisation routing depends on."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from pydantic import ValidationError

from jobs.spec import (
    ENGINE_OPTIONS,
    JobSpec,
    Workload,
    configuration_of,
    host_of_queue,
    normalize_vram_split,
    parse_context,
    queue_name,
)
from jobs.version import SCHEMA_VERSION


def _fields(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "campaign": "halo-vs-laptop",
        "host": "laptop-80w",
        "engine": "llama-bench",
        "model": "tiny:q8_0",
        "backend": "cpu",
        "context": 2048,
        "configuration": {"vram_split": "32G"},
        "workload": Workload(prompt_tokens=64, gen_tokens=32),
        "repetitions": 3,
        "timeout_s": 600,
    }
    fields.update(changes)
    return fields


def _spec(**changes: Any) -> JobSpec:
    return JobSpec(**_fields(**changes))


def test_same_spec_gives_the_same_id() -> None:
    first, second = _spec(), _spec()

    assert first.job_id == second.job_id
    assert len(first.job_id) == 16
    int(first.job_id, 16)  # hex digits only
    assert first.job_id == first.compute_id()
    assert first == second


def test_id_does_not_depend_on_field_order() -> None:
    fields = _fields(configuration={"vram_split": "32G"})
    reordered = dict(reversed(list(fields.items())))

    assert JobSpec(**reordered).job_id == JobSpec(**fields).job_id


def test_configuration_is_normalized_and_checked() -> None:
    assert JobSpec(**_fields(configuration={"vram_split": "32g"})).queue == (
        JobSpec(**_fields(configuration={"vram_split": "32G"})).queue
    )
    with pytest.raises(ValidationError, match="unknown configuration axes"):
        JobSpec(**_fields(configuration={"power_profile": "performance"}))


def test_campaign_is_part_of_the_id() -> None:
    assert _spec(campaign="halo-rerun").job_id != _spec().job_id


@pytest.mark.parametrize(
    "change",
    [
        {"host": "minipc-120w"},
        {"engine": "llama-server"},
        {"model": "tiny:q4_k_m"},
        {"backend": "vulkan"},
        {"context": 4096},
        {"configuration": {"vram_split": "96G"}},
        {"configuration": {}},
        {"workload": Workload(prompt_tokens=64, gen_tokens=33)},
        {"workload": Workload(prompt_tokens=65, gen_tokens=32)},
        {"repetitions": 5},
        {"timeout_s": 601},
        {"settings": {"platform_profile": "low-power"}},
        {"settings": {"power_limit_w": 45}},
        {"config_name": "quiet"},
        {"workload_name": "short"},
        {"gpu_layers": 20},
        {"gpu_layers": 0},
        {"flash_attention": "on"},
        {"kv_offload": False},
        {"think": "off"},
    ],
    ids=lambda change: next(iter(change)) + "=" + str(next(iter(change.values()))),
)
def test_any_field_change_gives_another_id(change: dict[str, Any]) -> None:
    assert _spec(**change).job_id != _spec().job_id


def test_every_identifying_field_is_covered_by_the_id_test() -> None:
    # A field added to JobSpec later must be added to the parametrised test above too.
    covered = {
        "host", "engine", "model", "backend", "context", "configuration", "workload",
        "repetitions", "timeout_s", "campaign", "settings", "config_name", "workload_name",
        "gpu_layers", "flash_attention", "kv_offload", "think",
    }  # fmt: skip
    assert set(JobSpec.model_fields) - {"job_id", "schema_version"} == covered


def test_fields_added_later_keep_earlier_ids_when_unset() -> None:
    # The id of this spec before settings/config_name (schema 1) and workload_name/gpu_layers
    # (schema 4) and the engine options existed: the body without them. Resume must still match.
    later = {"settings", "config_name", "workload_name", "gpu_layers", *ENGINE_OPTIONS}
    body = _spec().model_dump(mode="json", exclude={"job_id", "schema_version", *later})
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert _spec().job_id == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    # ...and what orch at commit d78a096 (schema 3, before this contract) computed for it.
    assert _spec().job_id == "7a20670851073f22"


def test_settings_are_normalized_so_equal_settings_share_an_id() -> None:
    assert _spec(settings={"power_limit_w": 45}).settings == {"power_limit_w": "45"}
    assert (
        _spec(settings={"power_limit_w": "45.0"}).job_id
        == _spec(settings={"power_limit_w": 45}).job_id
    )
    with pytest.raises(ValidationError, match="not a number of watts"):
        _spec(settings={"power_limit_w": "lots"})
    with pytest.raises(ValidationError, match="unknown runtime setting 'fan_speed'"):
        _spec(settings={"fan_speed": "max"})


def test_all_ids_of_distinct_specs_are_distinct() -> None:
    specs = [
        _spec(host=host, model=model, context=context)
        for host in ("laptop-80w", "minipc-120w")
        for model in ("tiny:q8_0", "tiny:q4_k_m")
        for context in (512, 2048, 4096)
    ]
    assert len({s.job_id for s in specs}) == 12


def test_a_matching_job_id_is_accepted() -> None:
    spec = _spec()
    assert JobSpec(**_fields(job_id=spec.job_id)).job_id == spec.job_id


def test_tampered_job_id_is_rejected_with_both_ids() -> None:
    spec = _spec()
    with pytest.raises(ValidationError) as info:
        JobSpec(**_fields(job_id="0123456789abcdef"))

    [error] = info.value.errors()
    assert error["msg"] == (
        f"Value error, job_id 0123456789abcdef does not match its spec (expected {spec.job_id}): "
        "the message was altered or comes from another orch version"
    )


def test_message_with_altered_field_but_old_id_is_rejected() -> None:
    original = _spec()
    body = json.loads(original.model_dump_json())
    body["model"] = "big:f16"  # someone edits the queued message, keeps the id

    with pytest.raises(ValidationError, match=f"job_id {original.job_id} does not match"):
        JobSpec.model_validate_json(json.dumps(body))


def test_round_trip_through_json_keeps_the_id_and_everything_else() -> None:
    spec = _spec()
    text = spec.model_dump_json()
    back = JobSpec.model_validate_json(text)

    assert back == spec
    assert back.job_id == spec.job_id
    assert json.loads(text)["job_id"] == spec.job_id
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION
    assert back.workload == Workload(prompt_tokens=64, gen_tokens=32)


def test_spec_is_frozen() -> None:
    spec = _spec()
    with pytest.raises(ValidationError):
        spec.context = 4096


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="extra"):
        JobSpec(**_fields(command="rm -rf /"))


@pytest.mark.parametrize(
    ("field", "value"),
    [("host", "laptop 80w"), ("host", "-laptop"), ("backend", ""), ("context", 0), ("model", "")],
)
def test_invalid_field_values_are_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        _spec(**{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_queue_follows_host_and_configuration() -> None:
    assert _spec().queue == "orch.laptop-80w.vram-32G"
    assert _spec(host="minipc-120w", configuration={}).queue == "orch.minipc-120w.default"


@pytest.mark.parametrize(
    ("host", "configuration", "expected"),
    [
        ("laptop-80w", {"vram_split": "32G"}, "orch.laptop-80w.vram-32G"),
        ("laptop-80w", {"vram_split": "512M"}, "orch.laptop-80w.vram-512M"),
        ("X", {}, "orch.X.default"),
        ("X", {"vram_split": ""}, "orch.X.default"),
        ("X", {"power_profile": "performance"}, "orch.X.default"),  # not a reboot-bound axis
    ],
)
def test_queue_name(host: str, configuration: dict[str, str], expected: str) -> None:
    assert queue_name(host, configuration) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("32g", "32G"),
        ("32G", "32G"),
        ("32 GiB", "32G"),
        ("32GB", "32G"),
        ("512M", "512M"),
        ("512mib", "512M"),
        (" 96G ", "96G"),
        ("048G", "48G"),
    ],
)
def test_normalize_vram_split_accepts(text: str, expected: str) -> None:
    assert normalize_vram_split(text) == expected


@pytest.mark.parametrize("text", ["0G", "0M", "abc", "-1G", "32", "1.5G", "32T", "G", ""])
def test_normalize_vram_split_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a VRAM size: expected e\.g\. 512M, 32G or 96G"):
        normalize_vram_split(text)


def test_normalize_vram_split_names_the_bad_value() -> None:
    with pytest.raises(ValueError) as info:
        normalize_vram_split("-1G")
    assert str(info.value).startswith("'-1G' is not a VRAM size")


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (
            {"vram_split": "32G", "form_factor": "laptop", "power_limit_w": 80},
            {"vram_split": "32G"},
        ),
        ({"form_factor": "mini-pc"}, {}),
        ({"vram_split": None, "power_limit_w": 120}, {}),
        ({}, {}),
    ],
)
def test_configuration_of_keeps_only_reboot_bound_facts(
    facts: dict[str, Any], expected: dict[str, str]
) -> None:
    assert configuration_of(facts) == expected


def test_configuration_of_routes_to_the_same_queue_as_the_job() -> None:
    facts = {"vram_split": "32G", "form_factor": "laptop"}
    assert queue_name("laptop-80w", configuration_of(facts)) == _spec().queue


def test_axes_names_the_job_for_a_report() -> None:
    assert _spec().axes() == {
        "host": "laptop-80w",
        "engine": "llama-bench",
        "model": "tiny:q8_0",
        "backend": "cpu",
        "context": 2048,
        "vram_split": "32G",
    }


def test_ttm_pages_limit_is_a_reboot_axis_with_its_own_queue() -> None:
    job = _spec(configuration={"vram_split": "512m", "ttm_pages_limit": 27648000})
    assert job.configuration == {"vram_split": "512M", "ttm_pages_limit": "27648000"}
    assert job.queue == "orch.laptop-80w.vram-512M+ttm-27648000"
    assert host_of_queue(job.queue) == "laptop-80w"
    with pytest.raises(ValidationError, match="not a number of 4 KiB pages"):
        _spec(configuration={"ttm_pages_limit": "lots"})


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("16K", 16384), ("16k", 16384), ("198K", 202752), ("1M", 1048576), ("1m", 1048576),
     ("64 K", 65536), ("4096", 4096), (4096, 4096), (4096.0, 4096)],
)  # fmt: skip
def test_context_sizes_count_k_as_1024_tokens(text: object, tokens: int) -> None:
    assert parse_context(text) == tokens


@pytest.mark.parametrize(
    "junk", ["16KB", "16KiB", "1.5K", "16k tokens", "", "K", "-5", -5, 0, "0M", True, None, 1.5,
             float("inf"), "9" * 400, 2**32, "4194304K"],
)  # fmt: skip
def test_junk_is_not_a_context_size(junk: object) -> None:
    with pytest.raises(ValueError, match="context"):
        parse_context(junk)
