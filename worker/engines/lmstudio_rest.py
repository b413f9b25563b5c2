"""LM Studio's v1 REST API for models (0.4.0+), as lmstudio-ai/docs at c6854fb documents it:

- `GET /api/v1/models` (1_developer/2_rest/list.md): `{"models": [{"type", "key",
  "loaded_instances": [{"id", "config": {"context_length", "flash_attention",
  "offload_kv_cache_to_gpu", ...}}], ...}]}`. It is also how the server's API generation is
  told: the v1 API came with 0.4.0 (api-changelog.md), so a 404 there is an LM Studio 0.3,
  which orch refuses (its v0 API cannot load a model with a context).
- `POST /api/v1/models/load` (load.md): `model`, `context_length`, `flash_attention`,
  `offload_kv_cache_to_gpu`, `echo_load_config` at the top level; answers `type`,
  `instance_id`, `load_time_seconds`, `status: "loaded"` and, echoed, `load_config` ("only
  parameters that applied").
- `POST /api/v1/models/unload` (unload.md): `{"instance_id"}`, answers `{"instance_id"}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from worker.engines.http_stream import HttpError, get_json, post_json

LOAD_TIMEOUT_S = 1200.0


class LoadRefused(Exception):
    """LM Studio could not, or would not, load the model as the job asks."""


@dataclass(frozen=True)
class Loaded:
    """One instance the worker loaded, and what LM Studio says it loaded."""

    instance_id: str
    load_time_s: float | None
    load_config: dict[str, Any]  # as LM Studio applied it (echoed, or from the model list)
    config_source: str  # where load_config was read


def list_models(url: str, token: str | None) -> list[dict[str, Any]]:
    """The `models` of `GET /api/v1/models`; a pre-0.4 LM Studio is refused with what to do."""
    try:
        answer = get_json(url, "/api/v1/models", timeout_s=30, token=token)
    except HttpError as exc:
        if exc.status == 404:
            raise HttpError(
                f"LM Studio at {url} has no /api/v1/models: it is older than 0.4.0, whose v1 "
                "REST API orch uses to load models with the job's context; update LM Studio",
                404,
            ) from None
        raise
    models = answer.get("models") if isinstance(answer, dict) else None
    if not isinstance(models, list):
        raise HttpError(f"GET /api/v1/models at {url}: no `models` list in {str(answer)[:200]}")
    return [m for m in models if isinstance(m, dict)]


def model_keys(models: list[dict[str, Any]]) -> list[str]:
    return [str(m.get("key")) for m in models if m.get("key") is not None]


def instance_of(models: list[dict[str, Any]], instance_id: str) -> tuple[str, dict[str, Any]]:
    """(model key, load config) of a loaded instance, or ("", {}) when none has that id."""
    for model in models:
        for instance in model.get("loaded_instances") or []:
            if isinstance(instance, dict) and instance.get("id") == instance_id:
                config = instance.get("config")
                return str(model.get("key")), config if isinstance(config, dict) else {}
    return "", {}


def load(
    url: str,
    token: str | None,
    model: str,
    context: int,
    kv_on_gpu: bool,
    flash_attention: bool | None = None,
) -> Loaded:
    """Load `model` as the job asks; flash_attention None leaves LM Studio's own choice."""
    body: dict[str, Any] = {
        "model": model,
        "context_length": context,
        "offload_kv_cache_to_gpu": kv_on_gpu,
        "echo_load_config": True,
    }
    if flash_attention is not None:
        body["flash_attention"] = flash_attention
    answer = post_json(url, "/api/v1/models/load", body, timeout_s=LOAD_TIMEOUT_S, token=token)
    if not isinstance(answer, dict):
        raise LoadRefused(f"POST /api/v1/models/load answered {str(answer)[:200]}")
    instance_id = answer.get("instance_id")
    if answer.get("status") != "loaded" or not isinstance(instance_id, str) or not instance_id:
        raise LoadRefused(f"LM Studio did not load {model}: {json.dumps(answer)[:300]}")
    if answer.get("type") not in (None, "llm"):
        raise LoadRefused(f"{model} is an {answer.get('type')} model, not an LLM")
    seconds = answer.get("load_time_seconds")
    load_time = float(seconds) if isinstance(seconds, int | float) and seconds > 0 else None
    config = answer.get("load_config")
    if isinstance(config, dict):
        return Loaded(instance_id, load_time, config, "load answer (echo_load_config)")
    # A server that ignored echo_load_config: the model list carries each instance's config.
    _key, listed = instance_of(list_models(url, token), instance_id)
    return Loaded(instance_id, load_time, listed, "GET /api/v1/models loaded_instances")


def unload(url: str, token: str | None, instance_id: str) -> None:
    post_json(url, "/api/v1/models/unload", {"instance_id": instance_id}, timeout_s=60,
              token=token)  # fmt: skip


def config_mismatch(
    loaded: Loaded, context: int, kv_on_gpu: bool | None, flash_attention: bool | None = None
) -> str | None:
    """Why the loaded instance is not what the job asked for (None: it is), with the evidence."""
    config = loaded.load_config
    evidence = f"({loaded.config_source}: {json.dumps(config, sort_keys=True)[:300]})"
    applied = config.get("context_length")
    if not isinstance(applied, int):
        return f"LM Studio did not say which context it loaded {evidence}"
    if applied != context:
        return f"LM Studio loaded context {applied}, not the job's {context} {evidence}"
    kv = config.get("offload_kv_cache_to_gpu")
    if kv_on_gpu is not None and isinstance(kv, bool) and kv != kv_on_gpu:
        where = "GPU" if kv else "CPU"
        return f"LM Studio put the KV cache on the {where}, against the job {evidence}"
    flash = config.get("flash_attention")
    if flash_attention is not None and isinstance(flash, bool) and flash != flash_attention:
        said = "on" if flash else "off"
        return f"LM Studio loaded with flash attention {said}, against the job {evidence}"
    return None
