"""worker.yaml: who a box is, what it may run, and which queue it consumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.protocol import MAX_JOB_TIMEOUT_S
from worker.config import load_worker_config
from worker.errors import ConfigError, WorkerError


@pytest.fixture
def box(tmp_path: Path) -> dict[str, Path]:
    """Real engine binaries and model files for a config to point at."""
    files = {
        "bench_cpu": tmp_path / "llama.cpp" / "bin" / "llama-bench",
        "bench_vulkan": tmp_path / "llama.cpp-vulkan" / "bin" / "llama-bench",
        "q8": tmp_path / "models" / "tiny-q8_0.gguf",
        "q4": tmp_path / "models" / "tiny-q4_k_m.gguf",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"GGUF" if path.suffix == ".gguf" else b"#!/bin/sh\n")
    files["bench_cpu"].chmod(0o755)
    files["bench_vulkan"].chmod(0o755)
    return files


def _config_text(box: dict[str, Path], host: str = "laptop-80w", vram: str = "32g") -> str:
    return f"""\
host: {host}
declared:
  form_factor: laptop
  power_limit_w: 80
  vram_split: {vram}
  cpu: AMD Ryzen AI Max+ 395
engines:
  llama-bench:
    backends:
      cpu: {box["bench_cpu"]}
      vulkan: {box["bench_vulkan"]}
models:
  "tiny:q8_0": {box["q8"]}
  "tiny:q4_k_m": {box["q4"]}
threads: 8
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(text)
    return path


def _error(path: Path, host: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_worker_config(path, host)
    assert isinstance(info.value, WorkerError)
    return str(info.value)


def test_valid_file(tmp_path: Path, box: dict[str, Path]) -> None:
    config = load_worker_config(_write(tmp_path, _config_text(box)))

    assert config.host == "laptop-80w"
    assert config.declared.form_factor == "laptop"
    assert config.declared.power_limit_w == 80.0
    assert config.declared.vram_split == "32G"  # normalised from 32g
    assert config.engines["llama-bench"].backends == {
        "cpu": box["bench_cpu"],
        "vulkan": box["bench_vulkan"],
    }
    assert config.models == {"tiny:q8_0": box["q8"], "tiny:q4_k_m": box["q4"]}
    assert config.threads == 8
    assert config.max_job_timeout_s == MAX_JOB_TIMEOUT_S


def test_declared_facts_keep_extras_and_drop_empties(tmp_path: Path, box: dict[str, Path]) -> None:
    config = load_worker_config(_write(tmp_path, _config_text(box)))

    assert config.declared_facts() == {
        "form_factor": "laptop",
        "power_limit_w": 80.0,
        "vram_split": "32G",
        "cpu": "AMD Ryzen AI Max+ 395",
    }


@pytest.mark.parametrize(
    ("vram", "queue"),
    [
        ("32g", "orch.laptop-80w.vram-32G"),
        ("32 GiB", "orch.laptop-80w.vram-32G"),
        ("512M", "orch.laptop-80w.vram-512M"),
        ("96G", "orch.laptop-80w.vram-96G"),
    ],
)
def test_queue_from_declared_vram_split(
    tmp_path: Path, box: dict[str, Path], vram: str, queue: str
) -> None:
    config = load_worker_config(_write(tmp_path, _config_text(box, vram=vram)))

    assert config.queue == queue
    assert config.configuration == {"vram_split": queue.rsplit("-", 1)[1]}


def test_queue_without_vram_split_is_default(tmp_path: Path) -> None:
    config = load_worker_config(_write(tmp_path, "host: minipc-120w\n"))

    assert config.configuration == {}
    assert config.queue == "orch.minipc-120w.default"
    assert config.engines == {} and config.models == {}


def test_host_option_agreeing_with_the_file(tmp_path: Path, box: dict[str, Path]) -> None:
    config = load_worker_config(_write(tmp_path, _config_text(box)), host="laptop-80w")
    assert config.host == "laptop-80w"


def test_host_option_fills_a_file_without_host(tmp_path: Path) -> None:
    config = load_worker_config(_write(tmp_path, "declared: {vram_split: 512M}\n"), host="box-2")

    assert config.host == "box-2"
    assert config.queue == "orch.box-2.vram-512M"


def test_empty_file_with_host_option(tmp_path: Path) -> None:
    assert load_worker_config(_write(tmp_path, ""), host="box-3").queue == "orch.box-3.default"


def test_host_option_disagreeing_with_the_file(tmp_path: Path, box: dict[str, Path]) -> None:
    path = _write(tmp_path, _config_text(box))

    assert _error(path, host="minipc-120w") == (
        f"{path}: host is 'laptop-80w' but --host says 'minipc-120w'; make them agree"
    )


def test_missing_host(tmp_path: Path) -> None:
    path = _write(tmp_path, "declared: {form_factor: laptop}\n")

    assert _error(path) == f"{path}:1: host: required key is missing"


def test_missing_binary_names_the_key(tmp_path: Path, box: dict[str, Path]) -> None:
    box["bench_vulkan"].unlink()
    path = _write(tmp_path, _config_text(box))

    assert _error(path) == (
        f"{path}: engines.llama-bench.backends.vulkan: {box['bench_vulkan']} does not exist"
    )


def test_missing_model_names_the_key(tmp_path: Path, box: dict[str, Path]) -> None:
    box["q4"].unlink()
    path = _write(tmp_path, _config_text(box))

    assert _error(path) == f"{path}: models.tiny:q4_k_m: {box['q4']} does not exist"


def test_every_missing_file_is_listed(tmp_path: Path, box: dict[str, Path]) -> None:
    box["bench_cpu"].unlink()
    box["q8"].unlink()
    path = _write(tmp_path, _config_text(box))

    assert _error(path).splitlines() == [
        f"{path}: engines.llama-bench.backends.cpu: {box['bench_cpu']} does not exist",
        f"{path}: models.tiny:q8_0: {box['q8']} does not exist",
    ]


def test_folder_instead_of_a_model_file(tmp_path: Path, box: dict[str, Path]) -> None:
    text = _config_text(box).replace(str(box["q8"]), str(box["q8"].parent))
    path = _write(tmp_path, text)

    assert _error(path) == f"{path}: models.tiny:q8_0: {box['q8'].parent} does not exist"


def test_home_relative_model_path(
    tmp_path: Path, box: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = _write(tmp_path, "host: box\nmodels:\n  'tiny:q8_0': ~/models/tiny-q8_0.gguf\n")

    assert load_worker_config(path).models["tiny:q8_0"].samefile(box["q8"])


def test_bad_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "host: laptop-80w\nmodels: {tiny: [a\n")

    message = _error(path)
    assert message == (
        f"{path}:3: invalid YAML: expected ',' or ']', but got '<stream end>'"
        " (while parsing a flow sequence at line 2)"
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("host: a\ncolour: red\n", "2: colour: unknown key (got 'red')"),
        ("host: a\nengines:\n  llama-bench: {backends: {cpu: /bin/sh}, flags: -ngl 99}\n",
         "3: engines.llama-bench.flags: unknown key (got '-ngl 99')"),
    ],
)  # fmt: skip
def test_unknown_key(tmp_path: Path, text: str, where: str) -> None:
    path = _write(tmp_path, text)

    assert _error(path) == f"{path}:{where}"


def test_several_validation_problems_are_all_listed(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "host: laptop 80w\ndeclared: {power_limit_w: -80, vram_split: 0G}\nthreads: 0\n",
    )

    lines = _error(path).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "host",
        "declared.power_limit_w",
        "declared.vram_split",
        "threads",
    ]
    assert [line.split(": ")[0] for line in lines] == [f"{path}:{n}" for n in (1, 2, 2, 3)]
    assert "'0G' is not a VRAM size" in lines[2]


def test_engine_without_backends(tmp_path: Path) -> None:
    path = _write(tmp_path, "host: a\nengines:\n  llama-bench: {backends: {}}\n")

    assert _error(path) == f"{path}:3: engines.llama-bench.backends: must not be empty"


def test_job_timeout_cap_above_the_protocol_limit(tmp_path: Path) -> None:
    path = _write(tmp_path, f"host: a\nmax_job_timeout_s: {MAX_JOB_TIMEOUT_S + 1}\n")

    assert _error(path) == (
        f"{path}:2: max_job_timeout_s: at most {MAX_JOB_TIMEOUT_S} (got {MAX_JOB_TIMEOUT_S + 1})"
    )


@pytest.mark.parametrize("text", ["- host: a\n", "laptop-80w\n"])
def test_file_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)

    assert _error(path) == f"{path}: expected a mapping with host, declared, engines, models"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    assert _error(path) == f"{path}: cannot read: No such file or directory"


def test_a_server_engine_names_its_url_and_served_models(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "host: box\nengines:\n  ollama:\n    url: http://127.0.0.1:11434\n"
        "    backends: {rocm: null}\n    models: {'glm:q4': 'glm-4.7-flash:q4_K_M'}\n",
    )
    config = load_worker_config(path)
    assert config.engines["ollama"].backends == {"rocm": None}
    assert config.models_for("ollama") == ["glm:q4"]
    assert config.models_for("llama-bench") == []


@pytest.mark.parametrize(
    ("engine_yaml", "message"),
    [
        ("url: http://127.0.0.1:11434\n    backends: {rocm: null}", "needs `models`"),
        ("backends: {cpu: null}", "give each backend a path"),
        ("url: ftp://x\n    backends: {rocm: null}\n    models: {a: b}", "should match pattern"),
    ],
)
def test_engine_entries_are_either_binaries_or_a_server(
    tmp_path: Path, engine_yaml: str, message: str
) -> None:
    path = _write(tmp_path, f"host: box\nengines:\n  e:\n    {engine_yaml}\n")
    assert message in _error(path)


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    # Ten levels of ten aliases: 10**10 values once expanded; refused while composing.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = _write(tmp_path, "host: a\n" + "\n".join(lines) + "\n")

    message = _error(path)
    assert message.startswith(f"{path}:")
    assert "values once aliases are expanded" in message


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "host: a\nthreads: 4\nthreads: 8\n")

    assert _error(path) == f"{path}:3: duplicate key 'threads' (first at line 2)"
