"""The shape of a GGUF model, as the memory planner needs it: read from the file's header.

Read on the coordinator (`orch plan --model NAME=PATH`) or by a worker for its own model files
(published in its inventory), so the planner works without copying 20 GB files around.

Example::

    shape = read_model_shape(Path("tiny-q8_0.gguf"))
    shape.n_layer, shape.n_head_kv, shape.weight_bytes
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import gguf


class ModelShape(BaseModel):
    """What the planner needs from a GGUF file's header; no tensor data is read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    # Per layer: some architectures (OpenELM, sliding-window hybrids) vary KV heads by layer.
    n_head_kv_per_layer: tuple[int, ...]
    key_length: int
    value_length: int
    n_ff: int
    n_vocab: int
    context_length: int | None
    expert_count: int | None
    expert_used_count: int | None
    expert_ff: int | None  # {arch}.expert_feed_forward_length, when the file sets it
    weight_bytes: int  # sum of tensor sizes as stored: what llama.cpp maps or uploads
    file_bytes: int

    @property
    def n_head_kv(self) -> int:
        return max(self.n_head_kv_per_layer)


def _field(reader: gguf.GGUFReader, key: str) -> object:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _int(reader: gguf.GGUFReader, key: str) -> int | None:
    value = _field(reader, key)
    if isinstance(value, list):
        return max(int(v) for v in value) if value else None
    return None if value is None else int(value)  # type: ignore[call-overload]


def read_model_shape(path: Path) -> ModelShape:
    """Read the shape of a GGUF model (architecture, heads, lengths, experts, sizes) from `path`.

    gguf (and numpy with it) is imported here only, so that readers of shapes stay light."""
    import gguf

    reader = gguf.GGUFReader(path)
    arch = str(_field(reader, "general.architecture"))

    def key(name: str) -> str:
        return name.format(arch=arch)

    def required(name: str) -> int:
        value = _int(reader, key(name))
        if value is None:
            raise ValueError(f"{path}: GGUF metadata has no {key(name)}; cannot plan memory")
        return value

    n_layer = required(gguf.Keys.LLM.BLOCK_COUNT)
    n_embd = required(gguf.Keys.LLM.EMBEDDING_LENGTH)
    n_head = required(gguf.Keys.Attention.HEAD_COUNT)
    raw_kv = _field(reader, key(gguf.Keys.Attention.HEAD_COUNT_KV))
    if isinstance(raw_kv, list):
        per_layer = tuple(int(v) for v in raw_kv)
    else:
        # llama.cpp's default when the key is absent: no GQA, one KV head per query head.
        per_layer = (int(raw_kv) if raw_kv is not None else n_head,) * n_layer  # type: ignore[call-overload]
    head_dim = n_embd // n_head
    tokens = reader.get_field(gguf.Keys.Tokenizer.LIST)
    n_vocab = _int(reader, key(gguf.Keys.LLM.VOCAB_SIZE)) or (
        len(tokens.data) if tokens is not None else 0
    )
    return ModelShape(
        architecture=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv_per_layer=per_layer,
        key_length=_int(reader, key(gguf.Keys.Attention.KEY_LENGTH)) or head_dim,
        value_length=_int(reader, key(gguf.Keys.Attention.VALUE_LENGTH)) or head_dim,
        n_ff=_int(reader, key(gguf.Keys.LLM.FEED_FORWARD_LENGTH)) or 4 * n_embd,
        n_vocab=n_vocab,
        context_length=_int(reader, key(gguf.Keys.LLM.CONTEXT_LENGTH)),
        expert_count=_int(reader, key(gguf.Keys.LLM.EXPERT_COUNT)),
        expert_used_count=_int(reader, key(gguf.Keys.LLM.EXPERT_USED_COUNT)),
        expert_ff=_int(reader, key(gguf.Keys.LLM.EXPERT_FEED_FORWARD_LENGTH)),
        weight_bytes=sum(int(t.n_bytes) for t in reader.tensors),
        file_bytes=path.stat().st_size,
    )
