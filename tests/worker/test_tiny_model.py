"""The tiny GGUF model: its structure read back with gguf, and real llama.cpp running it.

The llama.cpp tests need the binaries `orch engines install llama.cpp` builds; point
ORCH_LLAMA_CPP_BIN at their directory (e.g. ~/.cache/orch/llama.cpp/0.3.36-cpu/bin).
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest

from worker.engines.server_process import ServerProcess, free_port
from worker.errors import ProvisionError
from worker.provision.tiny_model import TinyModel, write_tiny_models

Q = gguf.GGMLQuantizationType
TOOLS = ("llama-bench", "llama-server", "llama-quantize")


def _field(reader: gguf.GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def _tensor_types(path: Path) -> dict[str, Q]:
    return {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize(
    ("quant", "matrix_type"), [("f16", Q.F16), ("q8_0", Q.Q8_0)], ids=["f16", "q8_0"]
)
def test_written_model_reads_back_as_tiny_llama(tmp_path: Path, quant: str, matrix_type: Q) -> None:
    [model] = write_tiny_models(tmp_path, quants=(quant,))

    assert model == TinyModel(f"tiny:{quant}", quant, tmp_path / f"tiny-{quant}.gguf")
    reader = gguf.GGUFReader(model.path)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.name") == "orch-tiny"
    assert _field(reader, "llama.block_count") == 2
    assert _field(reader, "llama.embedding_length") == 256
    assert _field(reader, "llama.attention.head_count") == 4
    assert _field(reader, "llama.rope.dimension_count") == 64
    assert _field(reader, "tokenizer.ggml.model") == "llama"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert isinstance(tokens, list) and isinstance(types, list)
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert types.count(gguf.TokenType.BYTE) == 256
    assert [tokens[i] for i, t in enumerate(types) if t == gguf.TokenType.BYTE][10] == "<0x0A>"
    assert len(set(tokens)) == len(tokens) == 512
    assert len(reader.tensors) == 3 + 2 * 9
    for name, tensor_type in _tensor_types(model.path).items():
        assert tensor_type == (Q.F32 if name.endswith("norm.weight") else matrix_type), name


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    [a] = write_tiny_models(tmp_path / "a", quants=("q8_0",), seed=7)
    [b] = write_tiny_models(tmp_path / "b", quants=("q8_0",), seed=7)
    [c] = write_tiny_models(tmp_path / "c", quants=("q8_0",), seed=8)

    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.path.read_bytes() != c.path.read_bytes()


def test_q4_k_m_without_llama_quantize_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="orch engines install llama.cpp"):
        write_tiny_models(tmp_path, quants=("q4_k_m",))
    with pytest.raises(ProvisionError, match="not found: .*nowhere"):
        write_tiny_models(tmp_path, quants=("q4_k_m",), llama_quantize=tmp_path / "nowhere")
    assert list(tmp_path.iterdir()) == []  # failed before writing the f16 file


def test_unknown_quant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="q3_k"):
        write_tiny_models(tmp_path, quants=("q3_k",))


def test_failing_llama_quantize_reports_its_stderr(tmp_path: Path) -> None:
    fake = tmp_path / "llama-quantize"
    fake.write_text("#!/bin/sh\necho 'main: invalid ftype' >&2\nexit 3\n")
    fake.chmod(0o755)

    with pytest.raises(ProvisionError, match="(?s)exited with 3.*invalid ftype"):
        write_tiny_models(tmp_path / "out", quants=("q4_k_m",), llama_quantize=fake)
    assert not (tmp_path / "out" / "tiny-q4_k_m.gguf").exists()


# --- real llama.cpp ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_models(llama_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tiny")
    models = write_tiny_models(
        out, quants=("q8_0", "q4_k_m"), llama_quantize=llama_bin / "llama-quantize"
    )
    return {m.quant: m.path for m in models}


@pytest.mark.integration
def test_llama_quantize_writes_q4_k_tensors(real_models: dict[str, Path]) -> None:
    types = _tensor_types(real_models["q4_k_m"])

    assert types["blk.0.attn_q.weight"] == Q.Q4_K
    assert types["blk.0.ffn_norm.weight"] == Q.F32
    assert (real_models["q4_k_m"].parent / "tiny-f16.gguf").is_file()


@pytest.mark.integration
@pytest.mark.parametrize("quant", ["q8_0", "q4_k_m"])
def test_llama_bench_runs_the_model(
    llama_bin: Path, real_models: dict[str, Path], quant: str
) -> None:
    argv = [str(llama_bin / "llama-bench"), "-m", str(real_models[quant])]
    done = subprocess.run(
        [*argv, "-p", "16", "-n", "8", "-r", "1", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    assert {(row["n_prompt"], row["n_gen"]) for row in rows} == {(16, 0), (0, 8)}
    assert all(row["avg_ts"] > 0 for row in rows)


# Loopback only: a proxy from the environment must never see these requests.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def server_url(llama_bin: Path, real_models: dict[str, Path]) -> Iterator[str]:
    argv = [str(llama_bin / "llama-server"), "-m", str(real_models["q8_0"]),
            "--host", "127.0.0.1", "--port", str(free_port())]  # fmt: skip
    server = ServerProcess(argv)  # the worker's own way of running llama-server
    server.start()
    try:
        assert server.wait_ready(60), f"llama-server not healthy:\n{server.log_tail()}"
        yield server.url
    finally:
        server.stop()


@pytest.mark.integration
def test_llama_server_generates_all_tokens_as_plain_text(server_url: str) -> None:
    body = json.dumps({"prompt": "Hello", "n_predict": 32, "temperature": 0}).encode()
    request = urllib.request.Request(
        f"{server_url}/completion", data=body, headers={"Content-Type": "application/json"}
    )
    with _LOCAL.open(request, timeout=60) as response:
        result = json.load(response)

    # Stopping early would mean end-of-text won the argmax: the output bias did not work.
    assert result["tokens_predicted"] == 32
    assert result["timings"]["predicted_n"] == 32
    content = result["content"]
    assert content.strip()
    assert "\ufffd" not in content
    assert content.isascii() and content.isprintable(), repr(content)
