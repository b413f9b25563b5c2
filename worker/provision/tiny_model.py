"""Write a tiny random-weight llama model as real GGUF files: llama.cpp runs without a download.

The model is a 2-layer llama with a width of 256 (the smallest width Q4_K accepts) and a ~512-token
SentencePiece vocabulary. Its weights are noise, but biased so that generation only ever picks
plain-text tokens: it never emits end-of-text or raw bytes, so a `n_predict` of 32 yields 32 tokens
of readable (if meaningless) text. The same seed gives byte-identical files.

Example::

    models = write_tiny_models(Path("models"), quants=("q8_0",))
    models[0].name  # -> "tiny:q8_0", models[0].path -> Path("models/tiny-q8_0.gguf")
"""

from __future__ import annotations

import string
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from worker.errors import ProvisionError

N_LAYERS = 2
N_EMBD = 256
N_HEAD = 4
N_HEAD_KV = 4
HEAD_DIM = N_EMBD // N_HEAD
N_FF = 512
CONTEXT_LENGTH = 8192
VOCAB_SIZE = 512
WEIGHT_STD = 0.02
# Logit weight of dimension 0 for tokens that must never be sampled. Dimension 0 of the final
# normed hidden state is a large positive constant (see `_weights`), so this sinks their logits
# far below every plain-text token.
BANNED_LOGIT_WEIGHT = -1.0

QUANTS = ("f16", "q8_0", "q4_k_m")
# What `gguf` itself writes; Q4_K_M is left to llama-quantize, which `gguf` cannot replace.
_GGUF_TYPES = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}

_COMMON_WORDS = """
the of and to in is it you that he was for on are with as his they be at one have this from or
had by word but what some we can out other were all there when up use your how said an each she
which do their time if will way about many then them write would like so these her long make
thing see him two has look more day could go come did number sound no most people my over know
water than call first who may down side been now find any new work part take get place made live
where after back little only round man year came show every good me give our under name very
through just form great think say help low line differ turn cause much mean before move right boy
old too same tell does set three want air well also play small end put home read hand port large
spell add even land here must big high such follow act why ask men change went light kind off
need house picture try us again animal point mother world near build self earth father
"""


@dataclass(frozen=True)
class TinyShape:
    """The architecture knobs a tiny model can vary: grouped-query attention (fewer KV heads
    than query heads) and a mixture of experts (Mixtral-style, llama architecture). The
    default is the dense tiny model every test uses; its bytes do not depend on this."""

    n_head_kv: int = N_HEAD_KV
    n_expert: int = 0  # 0: dense FFN
    n_expert_used: int = 0


DENSE = TinyShape()


@dataclass(frozen=True)
class TinyModel:
    """One written model file, named the way orch refers to it in a matrix (`tiny:q8_0`)."""

    name: str
    quant: str
    path: Path


def _vocab() -> tuple[list[str], list[float], list[int]]:
    """SentencePiece-style tokens, scores and types: specials, 256 byte tokens, then text pieces."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{byte:02X}>" for byte in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["▁"] + ["▁" + c for c in string.ascii_lowercase]
    pieces += list(string.ascii_letters + string.digits + string.punctuation)
    pieces += ["▁" + c for c in string.ascii_uppercase]
    pieces += ["▁" + word for word in _COMMON_WORDS.split()]
    seen = set(tokens)
    for piece in pieces:
        if piece not in seen and len(tokens) < VOCAB_SIZE:
            seen.add(piece)
            tokens.append(piece)
    n_text = len(tokens) - len(types)
    types += [gguf.TokenType.NORMAL] * n_text
    # SPM prefers higher-scoring pieces when merging; specials and bytes score 0 as in converted
    # llama models, text pieces get decreasing log-probability-like scores.
    scores = [0.0] * (len(tokens) - n_text) + [-float(rank) for rank in range(1, n_text + 1)]
    return tokens, scores, [int(t) for t in types]


def _weights(
    n_vocab: int, n_banned: int, seed: int, shape: TinyShape = DENSE
) -> dict[str, np.ndarray]:
    """Random llama weights in numpy layout (rows = outputs); gguf reverses the shapes on write."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(0.0, WEIGHT_STD, size=shape).astype(np.float32)

    ones = np.ones(N_EMBD, dtype=np.float32)
    embd = normal(n_vocab, N_EMBD)
    # Every token carries the same value in dimension 0, and no layer writes to it (row 0 of
    # attn_output and ffn_down is zero), so it reaches the output norm as a known positive constant.
    embd[:, 0] = 1.0
    output = normal(n_vocab, N_EMBD)
    output[:n_banned, 0] = BANNED_LOGIT_WEIGHT
    tensors = {"token_embd.weight": embd, "output_norm.weight": ones, "output.weight": output}
    kv_width = shape.n_head_kv * HEAD_DIM
    for layer in range(N_LAYERS):
        attn_output = normal(N_EMBD, N_EMBD)
        attn_output[0, :] = 0.0
        tensors |= {
            f"blk.{layer}.attn_norm.weight": ones,
            f"blk.{layer}.attn_q.weight": normal(N_EMBD, N_EMBD),
            f"blk.{layer}.attn_k.weight": normal(kv_width, N_EMBD),
            f"blk.{layer}.attn_v.weight": normal(kv_width, N_EMBD),
            f"blk.{layer}.attn_output.weight": attn_output,
            f"blk.{layer}.ffn_norm.weight": ones,
        }
        if shape.n_expert:
            n = shape.n_expert
            down = normal(n, N_EMBD, N_FF)
            down[:, 0, :] = 0.0
            tensors |= {
                f"blk.{layer}.ffn_gate_inp.weight": normal(n, N_EMBD),
                f"blk.{layer}.ffn_gate_exps.weight": normal(n, N_FF, N_EMBD),
                f"blk.{layer}.ffn_up_exps.weight": normal(n, N_FF, N_EMBD),
                f"blk.{layer}.ffn_down_exps.weight": down,
            }
        else:
            ffn_down = normal(N_EMBD, N_FF)
            ffn_down[0, :] = 0.0
            tensors |= {
                f"blk.{layer}.ffn_gate.weight": normal(N_FF, N_EMBD),
                f"blk.{layer}.ffn_up.weight": normal(N_FF, N_EMBD),
                f"blk.{layer}.ffn_down.weight": ffn_down,
            }
    return tensors


def _write_gguf(path: Path, quant: str, seed: int, shape: TinyShape = DENSE) -> None:
    """Write one f16 or q8_0 file; a half-written file never appears under the final name."""
    tensor_type, file_type = _GGUF_TYPES[quant]
    tokens, scores, types = _vocab()
    n_banned = sum(t != gguf.TokenType.NORMAL for t in types)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        writer.add_name("orch-tiny")
        writer.add_file_type(int(file_type))
        writer.add_context_length(CONTEXT_LENGTH)
        writer.add_embedding_length(N_EMBD)
        writer.add_block_count(N_LAYERS)
        writer.add_feed_forward_length(N_FF)
        writer.add_head_count(N_HEAD)
        writer.add_head_count_kv(shape.n_head_kv)
        if shape.n_expert:
            writer.add_expert_count(shape.n_expert)
            writer.add_expert_used_count(shape.n_expert_used)
        writer.add_rope_dimension_count(HEAD_DIM)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        for name, array in _weights(len(tokens), n_banned, seed, shape).items():
            if array.ndim == 1:
                writer.add_tensor(name, array)  # norms stay F32, as llama.cpp expects
            else:
                data = gguf.quants.quantize(array, tensor_type)
                writer.add_tensor(name, data, raw_dtype=tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    tmp.replace(path)


def _require_quantize(llama_quantize: Path | None) -> Path:
    if llama_quantize is None or not Path(llama_quantize).is_file():
        where = f" (not found: {llama_quantize})" if llama_quantize is not None else ""
        raise ProvisionError(
            f"q4_k_m needs llama.cpp's llama-quantize{where}: "
            "run `orch engines install llama.cpp` first, or pass the path to llama-quantize"
        )
    return Path(llama_quantize)


def _quantize_q4_k_m(source: Path, path: Path, llama_quantize: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    argv = [str(llama_quantize), str(source), str(tmp), "Q4_K_M"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ProvisionError(
            f"{llama_quantize} exited with {done.returncode} quantizing {source} to Q4_K_M:\n{tail}"
        )
    tmp.replace(path)


def write_tiny_models(
    out_dir: Path,
    *,
    quants: Sequence[str] = ("q8_0", "q4_k_m"),
    llama_quantize: Path | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _line: None,
) -> list[TinyModel]:
    """Write `tiny-<quant>.gguf` into `out_dir` for each quant; q4_k_m also leaves tiny-f16.gguf.

    q4_k_m is made from the f16 file by `llama_quantize` (llama.cpp's `llama-quantize` binary),
    which is required for it.
    """
    unknown = [quant for quant in quants if quant not in QUANTS]
    if unknown:
        raise ProvisionError(
            f"unknown tiny model quant(s) {', '.join(unknown)}: choose from {', '.join(QUANTS)}"
        )
    # Fail before writing anything rather than after the f16 file.
    quantize = _require_quantize(llama_quantize) if "q4_k_m" in quants else None
    out_dir.mkdir(parents=True, exist_ok=True)
    models: list[TinyModel] = []
    for quant in quants:
        path = out_dir / f"tiny-{quant}.gguf"
        if quantize is not None and quant == "q4_k_m":
            source = out_dir / "tiny-f16.gguf"
            if "f16" not in quants[: quants.index(quant)]:
                progress(f"writing {source}")
                _write_gguf(source, "f16", seed)
            progress(f"quantizing {source} -> {path} (Q4_K_M)")
            _quantize_q4_k_m(source, path, quantize)
        else:
            progress(f"writing {path}")
            _write_gguf(path, quant, seed)
        models.append(TinyModel(name=f"tiny:{quant}", quant=quant, path=path))
    return models


def write_tiny_variant(path: Path, shape: TinyShape, *, quant: str = "f16", seed: int = 0) -> Path:
    """A tiny model of another architecture shape (GQA, MoE), e.g. for checking the planner
    against llama.cpp's own buffer sizes on more than the dense model."""
    if quant not in _GGUF_TYPES:
        raise ProvisionError(
            f"tiny variants are written as {' or '.join(_GGUF_TYPES)}, not {quant}"
        )
    if shape.n_expert and not 0 < shape.n_expert_used <= shape.n_expert:
        raise ProvisionError("n_expert_used must be between 1 and n_expert")
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_gguf(path, quant, seed, shape)
    return path
