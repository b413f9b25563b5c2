"""Matrix files: expansion into jobs, and error messages that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.spec import JobSpec, Workload
from orchestrator.errors import MatrixError
from orchestrator.matrixfile import load_matrix_file

EXAMPLE = """\
campaign: halo-vs-laptop
repetitions: 3
engine: llama-bench
workload: {prompt_tokens: 64, gen_tokens: 32}
hosts: [laptop-80w, minipc-120w]
matrix:
  model: ["tiny:q8_0", "tiny:q4_k_m"]
  backend: [cpu]
  context: [512, 2048]
  vram_split: [32G]
exclude:
  - {host: minipc-120w, context: 512}
include:
  - {host: laptop-80w, model: "tiny:q8_0", backend: cpu, context: 4096, vram_split: 32G}
"""

# (host, model, context) in expansion order: hosts x models x contexts, minus the exclusion,
# then the include.
EXPECTED_JOBS = [
    ("laptop-80w", "tiny:q8_0", 512),
    ("laptop-80w", "tiny:q8_0", 2048),
    ("laptop-80w", "tiny:q4_k_m", 512),
    ("laptop-80w", "tiny:q4_k_m", 2048),
    ("minipc-120w", "tiny:q8_0", 2048),
    ("minipc-120w", "tiny:q4_k_m", 2048),
    ("laptop-80w", "tiny:q8_0", 4096),
]


def _write(tmp_path: Path, text: str = EXAMPLE, name: str = "matrix.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _edit(old: str, new: str) -> str:
    assert EXAMPLE.count(old) == 1, old
    return EXAMPLE.replace(old, new)


def _problems(path: Path) -> list[str]:
    with pytest.raises(MatrixError) as info:
        load_matrix_file(path)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def _triples(jobs: list[JobSpec]) -> list[tuple[str, str, int]]:
    return [(j.host, j.model, j.context) for j in jobs]


# -- expansion --------------------------------------------------------------------------------


def test_example_expands_to_seven_jobs_in_order(tmp_path: Path) -> None:
    mf = load_matrix_file(_write(tmp_path))

    assert _triples(mf.jobs) == EXPECTED_JOBS
    assert len({j.job_id for j in mf.jobs}) == 7


def test_every_job_carries_the_matrix_settings(tmp_path: Path) -> None:
    mf = load_matrix_file(_write(tmp_path))

    for job in mf.jobs:
        assert job.campaign == "halo-vs-laptop"
        assert job.engine == "llama-bench"
        assert job.backend == "cpu"
        assert job.configuration == {"vram_split": "32G"}
        assert job.workload == Workload(prompt_tokens=64, gen_tokens=32)
        assert job.repetitions == 3
        assert job.timeout_s == 3600


def test_queues_are_per_host_and_vram_split(tmp_path: Path) -> None:
    mf = load_matrix_file(_write(tmp_path))

    assert [j.queue for j in mf.jobs] == [
        *["orch.laptop-80w.vram-32G"] * 4,
        *["orch.minipc-120w.vram-32G"] * 2,
        "orch.laptop-80w.vram-32G",
    ]


def test_loaded_file_keeps_its_text_and_validated_matrix(tmp_path: Path) -> None:
    path = _write(tmp_path)
    mf = load_matrix_file(path)

    assert mf.path == path
    assert mf.text == EXAMPLE
    assert mf.matrix.campaign == "halo-vs-laptop"
    assert mf.matrix.hosts == ["laptop-80w", "minipc-120w"]
    assert mf.matrix.matrix.context == [512, 2048]


def test_reloading_gives_the_same_ids_in_the_same_order(tmp_path: Path) -> None:
    first = load_matrix_file(_write(tmp_path, name="a.yaml"))
    second = load_matrix_file(_write(tmp_path, name="b.yaml"))

    assert [j.job_id for j in first.jobs] == [j.job_id for j in second.jobs]
    assert first.jobs == second.jobs


def test_vram_split_spelling_does_not_change_ids(tmp_path: Path) -> None:
    plain = load_matrix_file(_write(tmp_path, name="a.yaml"))
    spelled = load_matrix_file(
        _write(tmp_path, _edit("vram_split: [32G]", 'vram_split: ["32 GiB"]'), "b.yaml")
    )

    assert [j.job_id for j in spelled.jobs] == [j.job_id for j in plain.jobs]


def test_another_campaign_gives_other_ids(tmp_path: Path) -> None:
    first = load_matrix_file(_write(tmp_path, name="a.yaml"))
    other = load_matrix_file(
        _write(tmp_path, _edit("campaign: halo-vs-laptop", "campaign: rerun"), "b.yaml")
    )

    assert _triples(other.jobs) == EXPECTED_JOBS
    assert not {j.job_id for j in first.jobs} & {j.job_id for j in other.jobs}


def test_include_duplicating_a_job_adds_nothing(tmp_path: Path) -> None:
    text = EXAMPLE + (
        '  - {host: minipc-120w, model: "tiny:q4_k_m", backend: cpu, context: 2048,'
        " vram_split: 32G}\n"
    )
    mf = load_matrix_file(_write(tmp_path, text))

    assert _triples(mf.jobs) == EXPECTED_JOBS
    assert [j.job_id for j in mf.jobs] == [
        j.job_id for j in load_matrix_file(_write(tmp_path, name="plain.yaml")).jobs
    ]


def test_include_can_bring_back_an_excluded_job(tmp_path: Path) -> None:
    text = EXAMPLE + '  - {host: minipc-120w, model: "tiny:q8_0", context: 512, vram_split: 32G}\n'
    mf = load_matrix_file(_write(tmp_path, text))

    assert _triples(mf.jobs) == [*EXPECTED_JOBS, ("minipc-120w", "tiny:q8_0", 512)]
    assert mf.jobs[-1].backend == "cpu"  # the single backend of the matrix


def test_exclude_naming_several_axes_needs_all_to_match(tmp_path: Path) -> None:
    text = _edit(
        "  - {host: minipc-120w, context: 512}",
        '  - {host: minipc-120w, model: "tiny:q4_k_m"}',
    )
    mf = load_matrix_file(_write(tmp_path, text))

    assert _triples(mf.jobs) == [
        ("laptop-80w", "tiny:q8_0", 512),
        ("laptop-80w", "tiny:q8_0", 2048),
        ("laptop-80w", "tiny:q4_k_m", 512),
        ("laptop-80w", "tiny:q4_k_m", 2048),
        ("minipc-120w", "tiny:q8_0", 512),
        ("minipc-120w", "tiny:q8_0", 2048),
        ("laptop-80w", "tiny:q8_0", 4096),
    ]


def test_defaults_without_vram_split_go_to_the_default_queue(tmp_path: Path) -> None:
    text = "campaign: c\nhosts: [box]\nmatrix:\n  model: [m]\n  context: [1024]\n"
    [job] = load_matrix_file(_write(tmp_path, text)).jobs

    assert job.engine == "llama-bench"
    assert job.backend == "cpu"
    assert job.repetitions == 3
    assert job.workload == Workload(prompt_tokens=512, gen_tokens=128)
    assert job.configuration == {}
    assert job.queue == "orch.box.default"


def test_include_without_vram_split_takes_the_single_matrix_value(tmp_path: Path) -> None:
    text = EXAMPLE + '  - {host: minipc-120w, model: "tiny:q8_0", context: 8192}\n'
    job = load_matrix_file(_write(tmp_path, text)).jobs[-1]

    assert (job.host, job.context) == ("minipc-120w", 8192)
    assert job.queue == "orch.minipc-120w.vram-32G"


def test_empty_exclude_entry_is_an_error(tmp_path: Path) -> None:
    text = _edit("  - {host: minipc-120w, context: 512}", "  - {}")
    path = _write(tmp_path, text)

    problems = _problems(path)
    assert problems[0].startswith(f"{path}:12: exclude[0]: ")


# -- where -----------------------------------------------------------------------------------


def test_where_names_file_line_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path)
    mf = load_matrix_file(path)

    assert mf.where(("matrix", "context", 1)) == f"{path}:9: matrix.context[1]"
    assert mf.where(("include", 0, "context")) == f"{path}:14: include[0].context"
    assert mf.where(("workload", "prompt_tokens")) == f"{path}:4: workload.prompt_tokens"


@pytest.mark.parametrize(
    ("axis", "value", "expected"),
    [
        ("host", "laptop-80w", "5: hosts[0]"),
        ("host", "minipc-120w", "5: hosts[1]"),
        ("model", "tiny:q4_k_m", "7: matrix.model[1]"),
        ("model", "tiny:q8_0", "7: matrix.model[0]"),
        ("backend", "cpu", "8: matrix.backend[0]"),
        ("context", 2048, "9: matrix.context[1]"),
        ("context", 4096, "14: include[0].context"),  # only the include names it
        ("vram_split", "32G", "10: matrix.vram_split[0]"),
        ("engine", "llama-bench", "3: engine"),  # no engine axis: the top-level key
    ],
)
def test_where_value_points_at_the_first_place_naming_a_value(
    tmp_path: Path, axis: str, value: object, expected: str
) -> None:
    path = _write(tmp_path)
    assert load_matrix_file(path).where_value(axis, value) == f"{path}:{expected}"


def test_where_value_for_an_include_only_host(tmp_path: Path) -> None:
    text = EXAMPLE + '  - {host: desktop, model: "tiny:q8_0", context: 4096, vram_split: 32G}\n'
    path = _write(tmp_path, text)

    assert load_matrix_file(path).where_value("host", "desktop") == f"{path}:15: include[1].host"


# -- errors ----------------------------------------------------------------------------------


def test_negative_context_names_file_line_key_and_value(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("context: [512, 2048]", "context: [512, -5]"))

    assert _problems(path) == [
        f"{path}:9: matrix.context[1]: a context must be a positive number of tokens (got -5)"
    ]


def test_context_that_is_not_a_number(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("context: [512, 2048]", "context: [512, big]"))

    assert _problems(path) == [
        f"{path}:9: matrix.context[1]: not a context size: expected a whole number of tokens such "
        "as 4096, 16K or 1M (K = 1024 tokens; no 'KB', no decimals) (got 'big')"
    ]


def test_invalid_vram_split_in_the_matrix(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("vram_split: [32G]", "vram_split: [32G, 0G]"))

    [problem] = _problems(path)
    assert problem.startswith(f"{path}:10: matrix.vram_split[1]: '0G' is not a VRAM size")


def test_invalid_yaml_reports_invalid_yaml_with_a_line(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("hosts: [laptop-80w, minipc-120w]", "hosts: [laptop-80w, minipc"))

    [problem] = _problems(path)
    # PyYAML notices the unclosed bracket of line 5 at the next key, line 6.
    assert problem == (
        f"{path}:6: invalid YAML: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence at line 5)"
    )


def test_invalid_yaml_names_the_line_where_the_bracket_was_opened(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("hosts: [laptop-80w, minipc-120w]", "hosts: [laptop-80w, minipc"))

    [problem] = _problems(path)
    assert "line 5" in problem or problem.startswith(f"{path}:5:")


def test_tab_indentation_is_invalid_yaml_on_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("  backend: [cpu]", "\tbackend: [cpu]"))

    [problem] = _problems(path)
    assert problem.startswith(f"{path}:8: invalid YAML: ")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("repetitions: 3\n", "repetitions: 3\ncolour: red\n"))

    assert _problems(path) == [f"{path}:3: colour: unknown key (got 'red')"]


def test_unknown_matrix_axis(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("  backend: [cpu]\n", "  backend: [cpu]\n  quant: [q8_0]\n"))

    assert _problems(path) == [f"{path}:9: matrix.quant: unknown key"]


def test_missing_hosts(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("hosts: [laptop-80w, minipc-120w]\n", ""))

    assert _problems(path) == [f"{path}:1: hosts: required key is missing"]


def test_empty_hosts(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("hosts: [laptop-80w, minipc-120w]", "hosts: []"))

    assert _problems(path) == [f"{path}:5: hosts: must not be empty"]


def test_missing_matrix_key_points_at_its_parent(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("  context: [512, 2048]\n", ""))

    assert _problems(path) == [f"{path}:6: matrix.context: required key is missing"]


def test_context_smaller_than_the_workload(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("context: [512, 2048]", "context: [512, 64]"))

    assert _problems(path) == [
        f"{path}:9: matrix.context[1]: context 64 is smaller than prompt_tokens + gen_tokens = 96"
    ]


def test_include_context_smaller_than_the_workload(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("context: 4096", "context: 95"))

    assert _problems(path) == [
        f"{path}:14: include[0].context: context 95 is smaller than prompt_tokens + gen_tokens = 96"
    ]


def test_context_equal_to_the_workload_is_enough(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("context: 4096", "context: 96"))

    assert load_matrix_file(path).jobs[-1].context == 96


def test_include_without_host(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("  - {host: laptop-80w, model:", "  - {model:"))

    assert _problems(path) == [f"{path}:14: include[0]: an include entry must name `host`"]


def test_include_without_backend_when_the_matrix_has_several(tmp_path: Path) -> None:
    text = _edit("backend: [cpu]", "backend: [cpu, vulkan]").replace(" backend: cpu,", "")
    path = _write(tmp_path, text)

    assert _problems(path) == [f"{path}:14: include[0]: an include entry must name `backend`"]


def test_include_with_unknown_key(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("backend: cpu,", "backend: cpu, quant: q8_0,"))

    assert _problems(path) == [f"{path}:14: include[0].quant: unknown key (got 'q8_0')"]


@pytest.mark.parametrize(
    "text", ["- laptop-80w\n- minipc-120w\n", "just a string\n", "", "# only a comment\n"]
)
def test_file_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)

    assert _problems(path) == [f"{path}:1: expected a mapping with campaign, hosts and matrix keys"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    assert _problems(path) == [f"{path}: cannot read: No such file or directory"]


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    assert _problems(tmp_path) == [f"{tmp_path}: cannot read: Is a directory"]


def test_several_validation_problems_are_all_reported(tmp_path: Path) -> None:
    text = (
        EXAMPLE.replace("hosts: [laptop-80w, minipc-120w]\n", "")
        .replace("repetitions: 3", "repetitions: 0")
        .replace("context: [512, 2048]", "context: [-5, 2048]")
        .replace("engine: llama-bench\n", "engine: llama-bench\ncolour: red\n")
    )
    path = _write(tmp_path, text)

    assert sorted(_problems(path)) == sorted(
        [
            f"{path}:2: repetitions: expected a positive integer (got 0)",
            f"{path}:1: hosts: required key is missing",
            f"{path}:9: matrix.context[0]: a context must be a positive number of tokens (got -5)",
            f"{path}:4: colour: unknown key (got 'red')",
        ]
    )


def test_several_expansion_problems_are_all_reported(tmp_path: Path) -> None:
    text = _edit("context: [512, 2048]", "context: [32, 2048, 64]").replace(
        "  - {host: laptop-80w, model:", "  - {model:"
    )
    path = _write(tmp_path, text)

    assert _problems(path) == [
        f"{path}:9: matrix.context[0]: context 32 is smaller than prompt_tokens + gen_tokens = 96",
        f"{path}:9: matrix.context[2]: context 64 is smaller than prompt_tokens + gen_tokens = 96",
        f"{path}:14: include[0]: an include entry must name `host`",
    ]


def test_prompt_text_is_refused_for_llama_bench(tmp_path: Path) -> None:
    text = EXAMPLE.replace(
        "workload: {prompt_tokens: 64, gen_tokens: 32}",
        "workload: {prompt_text: 'Write a haiku', gen_tokens: 32}",
    )
    path = _write(tmp_path, text)
    [problem] = _problems(path)
    assert problem.startswith(f"{path}:4: workload.prompt_text: llama-bench measures synthetic")


def test_an_image_workload_is_refused_for_engines_without_images(tmp_path: Path) -> None:
    text = EXAMPLE.replace(
        "workload: {prompt_tokens: 64, gen_tokens: 32}",
        "workload: {prompt_text: 'What is in this picture?', image: cat, gen_tokens: 32}",
    )
    problems = _problems(_write(tmp_path, text))
    assert any("workload.image: llama-bench cannot send an image" in p for p in problems)


CONFIGURED = """\
campaign: cfg
hosts: [laptop-80w, minipc-120w]
workload: {prompt_tokens: 64, gen_tokens: 32}
configurations:
  quiet-512m: {vram_split: 512M, platform_profile: low-power, power_limit_w: 45}
  fast-32g: {vram_split: 32G, platform_profile: performance}
matrix:
  model: ["tiny:q8_0"]
  context: [512]
  configuration: [quiet-512m, fast-32g]
exclude:
  - {host: minipc-120w, vram_split: 512M}
"""


def test_named_configurations_expand_into_reboot_and_runtime_settings(tmp_path: Path) -> None:
    jobs = load_matrix_file(_write(tmp_path, CONFIGURED)).jobs
    got = {(j.host, j.config_name, j.queue, tuple(j.settings.items())) for j in jobs}
    assert got == {
        ("laptop-80w", "quiet-512m", "orch.laptop-80w.vram-512M",
         (("platform_profile", "low-power"), ("power_limit_w", "45"))),
        ("laptop-80w", "fast-32g", "orch.laptop-80w.vram-32G",
         (("platform_profile", "performance"),)),
        # the exclusion matched the named configuration's carve-out
        ("minipc-120w", "fast-32g", "orch.minipc-120w.vram-32G",
         (("platform_profile", "performance"),)),
    }  # fmt: skip


def test_runtime_settings_as_plain_axes(tmp_path: Path) -> None:
    text = (
        "campaign: caps\nhosts: [minipc-120w]\nworkload: {prompt_tokens: 64, gen_tokens: 32}\n"
        "matrix: {model: [m], context: [512], power_limit_w: [45, 80.0], vram_split: [32G]}\n"
    )
    jobs = load_matrix_file(_write(tmp_path, text)).jobs
    assert {j.settings.get("power_limit_w") for j in jobs} == {"45", "80"}
    assert {j.queue for j in jobs} == {"orch.minipc-120w.vram-32G"}  # runtime: same queue


def test_unknown_configuration_and_a_setting_given_twice(tmp_path: Path) -> None:
    text = CONFIGURED.replace("[quiet-512m, fast-32g]", "[quiet-512m, turbo]").replace(
        "  context: [512]\n", "  context: [512]\n  platform_profile: [balanced]\n"
    )
    path = _write(tmp_path, text)
    assert _problems(path) == [  # in the order of the file's lines
        f"{path}:10: matrix.platform_profile: platform_profile is set both here and by "
        "configuration 'quiet-512m': keep it in one place",
        f"{path}:11: matrix.configuration[1]: unknown configuration 'turbo' (defined: fast-32g, "
        "quiet-512m)",
    ]


def test_a_power_limit_must_be_positive(tmp_path: Path) -> None:
    path = _write(tmp_path, CONFIGURED.replace("power_limit_w: 45", "power_limit_w: 0"))
    assert _problems(path) == [
        f"{path}:5: configurations.quiet-512m.power_limit_w: expected a positive number of watts "
        "(got 0)"
    ]


def test_the_shipped_configurations_example_expands() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "configurations.yaml"
    jobs = load_matrix_file(path).jobs
    by_host: dict[str, set[str | None]] = {}
    for job in jobs:
        by_host.setdefault(job.host, set()).add(job.config_name)
    assert by_host == {
        "laptop-80w": {"quiet-512m", "fast-512m", "fast-32g"},
        "minipc-120w": {"cap-85w", "cap-120w"},
    }
    assert len(jobs) == 5 * 2 * 2  # configurations x backends x contexts


def test_an_include_naming_a_configuration_takes_its_settings(tmp_path: Path) -> None:
    text = CONFIGURED.replace(
        "  configuration: [quiet-512m, fast-32g]\n",
        "  configuration: [fast-32g]\n  vram_split: []\n",
    ).replace("exclude:\n  - {host: minipc-120w, vram_split: 512M}\n", "") + (
        "include:\n  - {host: minipc-120w, model: 'tiny:q8_0', context: 512, "
        "configuration: quiet-512m}\n"
    )
    jobs = load_matrix_file(_write(tmp_path, text)).jobs
    [quiet] = [j for j in jobs if j.config_name == "quiet-512m"]
    assert quiet.queue == "orch.minipc-120w.vram-512M"  # not the matrix's other carve-out
    assert quiet.settings == {"platform_profile": "low-power", "power_limit_w": "45"}


def test_an_include_may_not_override_its_configuration(tmp_path: Path) -> None:
    text = CONFIGURED + (
        "include:\n  - {host: minipc-120w, model: 'tiny:q8_0', context: 512, "
        "configuration: quiet-512m, vram_split: 32G}\n"
    )
    path = _write(tmp_path, text)
    assert _problems(path) == [
        f"{path}:14: include[0].vram_split: vram_split is set both here and by configuration "
        "'quiet-512m': keep it in one place"
    ]


# -- context sizes with K/M suffixes -----------------------------------------------------------


def test_contexts_with_k_and_m_suffixes_count_1024(tmp_path: Path) -> None:
    text = _edit("context: [512, 2048]", "context: [16K, 64k, 198K, 1M]").replace(
        "context: 4096", "context: 4K"
    )
    jobs = load_matrix_file(_write(tmp_path, text)).jobs
    assert sorted({j.context for j in jobs}) == [4096, 16384, 65536, 202752, 1048576]


def test_a_suffixed_context_is_the_same_job_as_the_number(tmp_path: Path) -> None:
    numbers = load_matrix_file(_write(tmp_path, EXAMPLE, "a.yaml")).jobs
    text = _edit("context: [512, 2048]", "context: [512, 2K]").replace(
        "context: 4096", "context: 4k"
    )
    suffixed = load_matrix_file(_write(tmp_path, text, "b.yaml")).jobs
    assert [j.job_id for j in suffixed] == [j.job_id for j in numbers]


def test_an_exclusion_may_name_a_suffixed_context(tmp_path: Path) -> None:
    text = _edit("context: [512, 2048]", "context: [512, 2K]").replace(
        "{host: minipc-120w, context: 512}", "{host: minipc-120w, context: 2K}"
    )
    jobs = load_matrix_file(_write(tmp_path, text)).jobs
    assert {j.context for j in jobs if j.host == "minipc-120w"} == {512}


NOT_A_SIZE = (
    "not a context size: expected a whole number of tokens such as 4096, 16K or 1M "
    "(K = 1024 tokens; no 'KB', no decimals)"
)
NOT_POSITIVE = "a context must be a positive number of tokens"


@pytest.mark.parametrize(
    ("junk", "expected"),
    [
        ("16KB", f"{NOT_A_SIZE} (got '16KB')"),  # tokens, not bytes
        ("1.5K", f"{NOT_A_SIZE} (got '1.5K')"),
        ("16k tokens", f"{NOT_A_SIZE} (got '16k tokens')"),
        ("K", f"{NOT_A_SIZE} (got 'K')"),
        ("-2K", f"{NOT_A_SIZE} (got '-2K')"),
        ("yes", f"{NOT_A_SIZE} (got True)"),  # YAML's boolean
        ("0K", f"{NOT_POSITIVE} (got '0K')"),
        ("0", f"{NOT_POSITIVE} (got 0)"),
    ],
)
def test_a_context_that_is_not_a_size_names_file_line_and_value(
    tmp_path: Path, junk: str, expected: str
) -> None:
    path = _write(tmp_path, _edit("context: [512, 2048]", f"context: [512, {junk}]"))
    assert _problems(path) == [f"{path}:9: matrix.context[1]: {expected}"]


def test_a_context_beyond_llama_cpp_s_32_bit_n_ctx_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, _edit("context: 4096", "context: 4194304K"))
    [problem] = _problems(path)
    assert problem.startswith(f"{path}:14: include[0].context: a context is at most 4294967295")


# -- job ids stay what they were ------------------------------------------------------------

# Ids of EXAMPLE's and CONFIGURED's jobs computed by orch at commit d78a096, before JobSpec had
# workload_name and gpu_layers: campaigns submitted then must resume with the same ids.
EXAMPLE_IDS = [
    "728f3045395f0303", "02cdc5d760b9df67", "b8a0aafa1a380bc1", "89b864bd551d0fff",
    "e92fd71b35548f1d", "d46fc336b793e309", "ad793e68cbda82d5",
]  # fmt: skip
CONFIGURED_IDS = ["4f4b972e4a9078f9", "026a7a4de7af9dcf", "ae69229cad8d2125"]


def test_matrices_without_the_new_axes_keep_their_job_ids(tmp_path: Path) -> None:
    assert [j.job_id for j in load_matrix_file(_write(tmp_path, EXAMPLE, "a.yaml")).jobs] == (
        EXAMPLE_IDS
    )
    assert [j.job_id for j in load_matrix_file(_write(tmp_path, CONFIGURED, "b.yaml")).jobs] == (
        CONFIGURED_IDS
    )


def test_the_shipped_matrix_example_keeps_its_job_ids() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "matrix.yaml"
    assert [j.job_id for j in load_matrix_file(path).jobs] == EXAMPLE_IDS


# -- named workloads ------------------------------------------------------------------------

WORKLOADS = """\
campaign: wl
hosts: [halo]
workloads:
  short: {prompt_tokens: 512, gen_tokens: 128}
  long-prompt: {prompt_tokens: 8192, gen_tokens: 128}
  vision: {prompt_text: "What is in this picture?", image: cat, gen_tokens: 64}
matrix:
  model: [qwen3-8b, qwen3-vl-32b]
  context: [16K]
  workload: [short, long-prompt]
include:
  - {host: halo, model: qwen3-vl-32b, context: 16K, engine: lmstudio, workload: vision}
"""


def test_a_workload_axis_crosses_named_workloads(tmp_path: Path) -> None:
    jobs = load_matrix_file(_write(tmp_path, WORKLOADS)).jobs
    got = [(j.engine, j.model, j.workload_name, j.workload.prompt_tokens) for j in jobs]
    assert got == [
        ("llama-bench", "qwen3-8b", "short", 512),
        ("llama-bench", "qwen3-8b", "long-prompt", 8192),
        ("llama-bench", "qwen3-vl-32b", "short", 512),
        ("llama-bench", "qwen3-vl-32b", "long-prompt", 8192),
        ("lmstudio", "qwen3-vl-32b", "vision", 512),
    ]
    assert jobs[-1].workload.image == "cat"
    assert jobs[-1].axes()["workload"] == "vision"


def test_named_workloads_have_ids_of_their_own(tmp_path: Path) -> None:
    # Same sizes, one named: the name is part of the id (it is a report axis).
    text = "campaign: wl\nhosts: [halo]\nworkload: {prompt_tokens: 512, gen_tokens: 128}\n"
    plain = load_matrix_file(
        _write(tmp_path, text + "matrix: {model: [m], context: [16K]}\n", "a.yaml")
    ).jobs
    named = load_matrix_file(_write(tmp_path, WORKLOADS, "b.yaml")).jobs
    [short] = [j for j in named if j.model == "qwen3-8b" and j.workload_name == "short"]
    assert short.workload == plain[0].workload
    assert plain[0].workload_name is None and short.job_id != plain[0].job_id


def test_an_exclusion_may_name_a_workload(tmp_path: Path) -> None:
    text = WORKLOADS + "exclude:\n  - {model: qwen3-vl-32b, workload: long-prompt}\n"
    jobs = load_matrix_file(_write(tmp_path, text)).jobs
    assert {(j.model, j.workload_name) for j in jobs} == {
        ("qwen3-8b", "short"), ("qwen3-8b", "long-prompt"),
        ("qwen3-vl-32b", "short"), ("qwen3-vl-32b", "vision"),
    }  # fmt: skip


def test_an_include_takes_the_single_workload_of_the_axis(tmp_path: Path) -> None:
    text = WORKLOADS.replace("workload: [short, long-prompt]", "workload: [short]").replace(
        ", engine: lmstudio, workload: vision}", "}"
    )
    jobs = load_matrix_file(_write(tmp_path, text)).jobs
    assert {j.workload_name for j in jobs} == {"short"}


def test_an_include_names_one_of_several_workloads(tmp_path: Path) -> None:
    path = _write(tmp_path, WORKLOADS.replace(", engine: lmstudio, workload: vision}", "}"))
    assert _problems(path) == [f"{path}:12: include[0]: an include entry must name `workload`"]


def test_without_a_workload_axis_includes_may_still_name_one(tmp_path: Path) -> None:
    text = WORKLOADS.replace("  workload: [short, long-prompt]\n", "")
    jobs = load_matrix_file(_write(tmp_path, text)).jobs
    # the matrix runs the default single workload; the include its named one
    assert [(j.workload_name, j.workload.prompt_tokens) for j in jobs] == [
        (None, 512), (None, 512), ("vision", 512),
    ]  # fmt: skip


def test_unknown_workload_names_are_refused_where_they_are_used(tmp_path: Path) -> None:
    text = (
        WORKLOADS.replace("[short, long-prompt]", "[short, long]").replace(
            "workload: vision}", "workload: visoin}"
        )
        + "exclude:\n  - {workload: shrot}\n"
    )
    path = _write(tmp_path, text)
    known = "(defined: long-prompt, short, vision)"
    assert _problems(path) == [
        f"{path}:10: matrix.workload[1]: unknown workload 'long' {known}",
        f"{path}:12: include[0].workload: unknown workload 'visoin' {known}",
        f"{path}:14: exclude[0].workload: unknown workload 'shrot' {known}",
    ]


def test_a_workload_axis_without_workloads_says_so(tmp_path: Path) -> None:
    text = EXAMPLE.replace("  backend: [cpu]\n", "  backend: [cpu]\n  workload: [short]\n")
    path = _write(tmp_path, text)
    assert _problems(path) == [
        f"{path}:4: workload: the matrix has a `workload` axis: name this workload under "
        "`workloads:` and list it there, or drop the axis",
        f"{path}:9: matrix.workload[0]: unknown workload 'short' (defined: none: add a "
        "`workloads:` mapping)",
    ]


def test_one_workload_and_a_workload_axis_are_refused_together(tmp_path: Path) -> None:
    path = _write(tmp_path, "workload: {prompt_tokens: 64, gen_tokens: 32}\n" + WORKLOADS)
    [problem] = _problems(path)
    assert problem.startswith(f"{path}:1: workload: the matrix has a `workload` axis")


def test_a_context_too_small_for_a_named_workload(tmp_path: Path) -> None:
    text = WORKLOADS.replace("context: [16K]", "context: [4K, 16K]")
    path = _write(tmp_path, text)
    assert _problems(path) == [
        f"{path}:9: matrix.context[0]: context 4096 is smaller than prompt_tokens + gen_tokens "
        "= 8320 (workload 'long-prompt')"
    ]
    # An exclusion is how the file says that the long prompt skips the small context.
    fixed = _write(
        tmp_path, text + "exclude:\n  - {workload: long-prompt, context: 4K}\n", "b.yaml"
    )
    jobs = load_matrix_file(fixed).jobs
    assert (4096, "long-prompt") not in {(j.context, j.workload_name) for j in jobs}
    assert (4096, "short") in {(j.context, j.workload_name) for j in jobs}


def test_engine_checks_follow_each_job_s_workload(tmp_path: Path) -> None:
    # vision goes to lmstudio only: fine. Sent to llama-server too, its image is refused where
    # the workload sets it; a prompt_text workload on llama-bench likewise.
    text = WORKLOADS + (
        "  - {host: halo, model: qwen3-vl-32b, context: 16K, engine: llama-server, "
        "workload: vision}\n"
        "  - {host: halo, model: qwen3-8b, context: 16K, engine: llama-bench, workload: vision}\n"
    )
    path = _write(tmp_path, text)
    assert _problems(path) == [
        f"{path}:6: workloads.vision.prompt_text: llama-bench measures synthetic prompts only: "
        "use prompt_tokens, or a server engine such as llama-server",
        f"{path}:6: workloads.vision.image: llama-bench, llama-server cannot send an image: use "
        "lmstudio, ollama or openai for vision models",
    ]


# -- gpu_layers ------------------------------------------------------------------------------

LAYERS = """\
campaign: ngl
hosts: [halo]
workload: {prompt_tokens: 64, gen_tokens: 32}
matrix:
  model: [m]
  context: [512]
  backend: [cpu, vulkan]
  gpu_layers: [0, 20, 999]
"""


def test_a_gpu_layers_axis_sweeps_gpu_backends_and_leaves_cpu_alone(tmp_path: Path) -> None:
    jobs = load_matrix_file(_write(tmp_path, LAYERS)).jobs
    assert [(j.backend, j.gpu_layers) for j in jobs] == [
        ("cpu", None), ("vulkan", 0), ("vulkan", 20), ("vulkan", 999),
    ]  # fmt: skip
    assert jobs[2].axes()["gpu_layers"] == 20 and "gpu_layers" not in jobs[0].axes()


def test_gpu_layers_in_include_and_exclude(tmp_path: Path) -> None:
    text = LAYERS + (
        "exclude:\n  - {gpu_layers: 999}\n"
        "include:\n  - {host: halo, model: big, context: 512, backend: vulkan, gpu_layers: 40}\n"
    )
    jobs = load_matrix_file(_write(tmp_path, text)).jobs
    assert [(j.model, j.backend, j.gpu_layers) for j in jobs] == [
        ("m", "cpu", None), ("m", "vulkan", 0), ("m", "vulkan", 20), ("big", "vulkan", 40),
    ]  # fmt: skip


def test_gpu_layers_for_an_engine_without_the_knob_is_refused(tmp_path: Path) -> None:
    text = LAYERS.replace("  backend: [cpu, vulkan]\n", "  backend: [vulkan]\n  engine: [ollama]\n")
    path = _write(tmp_path, text)
    assert _problems(path) == [
        f"{path}:9: matrix.gpu_layers[{i}]: ollama takes no gpu_layers (only llama-bench and "
        f"llama-server pass llama.cpp's -ngl): exclude {{engine: ollama, gpu_layers: {n}}}, or "
        "set gpu_layers in include entries"
        for i, n in enumerate([0, 20, 999])
    ]


def test_an_include_asking_cpu_for_gpu_layers_is_refused(tmp_path: Path) -> None:
    text = (
        LAYERS + "include:\n  - {host: halo, model: m, context: 1K, backend: cpu, gpu_layers: 8}\n"
    )
    path = _write(tmp_path, text)
    assert _problems(path) == [
        f"{path}:10: include[0].gpu_layers: backend cpu puts no layer on a GPU: leave gpu_layers "
        "out of this entry"
    ]


def test_negative_gpu_layers(tmp_path: Path) -> None:
    path = _write(tmp_path, LAYERS.replace("[0, 20, 999]", "[0, -1]"))
    assert _problems(path) == [
        f"{path}:8: matrix.gpu_layers[1]: Input should be greater than or equal to 0 (got -1)"
    ]


# -- every problem at once ------------------------------------------------------------------


def test_a_bad_context_an_unknown_workload_and_a_bad_backend_in_one_error(tmp_path: Path) -> None:
    text = (
        WORKLOADS.replace("context: [16K]", "context: [16KB]")
        .replace("[short, long-prompt]", "[short, long]")
        .replace("  model: [", "  backend: [cpu, 'vulkan 2']\n  model: [")
    )
    path = _write(tmp_path, text)
    assert _problems(path) == [
        f"{path}:8: matrix.backend[1]: 'vulkan 2' is not a valid name: use letters, digits, '-', "
        "'_' and '.', starting with a letter or digit (got 'vulkan 2')",
        f"{path}:10: matrix.context[0]: not a context size: expected a whole number of tokens "
        "such as 4096, 16K or 1M (K = 1024 tokens; no 'KB', no decimals) (got '16KB')",
        f"{path}:11: matrix.workload[1]: unknown workload 'long' (defined: long-prompt, short, "
        "vision)",
    ]


def test_where_value_for_the_new_axes(tmp_path: Path) -> None:
    mf = load_matrix_file(_write(tmp_path, WORKLOADS))
    assert mf.where_value("workload", "long-prompt") == f"{mf.path}:10: matrix.workload[1]"
    assert mf.where_value("workload", "vision") == f"{mf.path}:12: include[0].workload"
    assert mf.where_value("context", 16384) == f"{mf.path}:9: matrix.context[0]"
    [vision] = [j for j in mf.jobs if j.workload_name == "vision"]
    assert mf.where_workload(vision, "image") == f"{mf.path}:6: workloads.vision.image"


def test_the_shipped_workloads_example_expands() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "workloads.yaml"
    jobs = load_matrix_file(path).jobs
    cpu = [j for j in jobs if j.backend == "cpu"]
    vulkan = [j for j in jobs if j.engine == "llama-bench" and j.backend == "vulkan"]
    assert {j.context for j in jobs} == {16384, 65536, 202752}
    assert len(cpu) == 3 * 2 and {j.gpu_layers for j in cpu} == {None}  # contexts x workloads
    assert len(vulkan) == 3 * 2 * 3 and {j.gpu_layers for j in vulkan} == {0, 20, 999}
    [vision] = [j for j in jobs if j.engine == "lmstudio"]
    assert (vision.model, vision.workload_name, vision.gpu_layers) == (
        "qwen3-vl-32b",
        "vision",
        None,
    )
    assert len(jobs) == len(cpu) + len(vulkan) + 1


def test_an_include_for_an_engine_without_the_knob_takes_no_gpu_layers(tmp_path: Path) -> None:
    text = LAYERS.replace("[0, 20, 999]", "[20]") + (
        "include:\n"
        "  - {host: halo, model: v, context: 1K, backend: vulkan, engine: lmstudio}\n"
        "  - {host: halo, model: v, context: 1K, backend: vulkan, engine: llama-server}\n"
    )
    jobs = load_matrix_file(_write(tmp_path, text)).jobs
    # the single gpu_layers value reaches the llama.cpp engines only
    assert [(j.engine, j.model, j.backend, j.gpu_layers) for j in jobs] == [
        ("llama-bench", "m", "cpu", None), ("llama-bench", "m", "vulkan", 20),
        ("lmstudio", "v", "vulkan", None), ("llama-server", "v", "vulkan", 20),
    ]  # fmt: skip
    explicit = _write(
        tmp_path, text.replace("engine: lmstudio}", "engine: lmstudio, gpu_layers: 8}")
    )
    assert _problems(explicit) == [
        f"{explicit}:10: include[0].gpu_layers: lmstudio takes no gpu_layers (only llama-bench and "
        "llama-server pass llama.cpp's -ngl): leave it out of this entry"
    ]
