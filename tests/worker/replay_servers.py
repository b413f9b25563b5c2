"""Local stand-ins for Ollama and LM Studio (which cannot be installed here), serving the payload
shapes their documentation gives (see tests/fixtures/ollama/ and tests/fixtures/lmstudio/). They
answer at a fixed pace so that client timing has something real to measure, and compute their
own figures from that pace.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ollama"
LMSTUDIO = FIXTURES.parent / "lmstudio"
TOKEN_INTERVAL_S = 0.002
PREFILL_S = 0.01


class _JsonHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def _json(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


IMAGE_TOKENS = 16  # what one image costs in the replay's prompt (a real projector: hundreds)
PREFILL_S_PER_TOKEN = 0.0002  # the replay's prefill time per prompt token it evaluates


def _ollama_tokens(state: dict[str, Any], request: dict[str, Any], path: str) -> list[str]:
    """The replay's tokens (words) of the prompt as the runner would see it: raw generate is
    the prompt itself; chat renders a template around the message, with the image marker put
    where server/prompt.go puts it (at `[img]`, else before the text). The image becomes
    IMAGE_TOKENS tokens only where a marker sits, as both runners require (runner regex
    `[img-N]` up to 0.24; since 0.30 llama-server's media marker)."""
    bos = ["<bos>"] if state["add_bos"] else []
    if path == "/api/generate":
        words = str(request["prompt"]).split()
        if request.get("images") and not any(w.startswith("[img-") for w in words):
            if state["version"] >= (0, 30):
                raise _OllamaError(500, "llama-server: the prompt has no media marker for the "
                                        "1 image sent")  # fmt: skip
            state["images_ignored"] += len(request["images"])  # up to 0.24: silently ignored
        return bos + words
    [message] = request["messages"]
    content = str(message["content"])
    images = message.get("images") or []
    for i in range(len(images)):
        tag = f"[img-{i}]"
        content = content.replace("[img]", tag, 1) if "[img]" in content else tag + " " + content
    words: list[str] = []
    for word in content.split():
        if re.fullmatch(r"\[img-\d+\]", word):
            state["image_after"].append(words[-1] if words else None)
            words += ["<img>"] * IMAGE_TOKENS
        else:
            words.append(word)
    return bos + ["<|user|>"] + words + ["<|assistant|>"]


class _OllamaError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _cached(previous: list[str], tokens: list[str]) -> int:
    """The prompt-cache hit: the common prefix with what the slot holds, less one when all of
    it matches (a runner always evaluates at least one token)."""
    n = 0
    for a, b in zip(previous, tokens, strict=False):
        if a != b:
            break
        n += 1
    return min(n, len(tokens) - 1)


def _ollama_ps(state: dict[str, Any]) -> dict[str, Any]:
    """`/api/ps`: the loaded model at the context it really got (num_ctx clamped to the trained
    context, llm/server.go); no `context_length` before 0.10."""
    ps: dict[str, Any] = json.loads((FIXTURES / "ps.json").read_text())
    entry = ps["models"][0]
    entry["size_vram"] = state["size_vram"]
    if state["version"] < (0, 10):
        del entry["context_length"]
    elif state["num_ctx"] is not None:
        entry["context_length"] = min(state["num_ctx"], state["trained_context"])
    return ps


def _ollama_show(state: dict[str, Any]) -> dict[str, Any]:
    show: dict[str, Any] = json.loads((FIXTURES / "show.json").read_text())
    show["capabilities"] = state["capabilities"]
    show["model_info"]["tokenizer.ggml.add_bos_token"] = state["add_bos"]
    show["model_info"]["llama.context_length"] = state["trained_context"]
    return show


def _ollama_stream(
    self: _JsonHandler,
    state: dict[str, Any],
    request: dict[str, Any],
    prompt_n: int,
    evaluated: int,
) -> None:
    """The streamed answer: `num_predict` tokens (fewer after `stop_after`: the model's EOS),
    then the final chunk with the server's counts and durations."""
    n = int(request["options"]["num_predict"])
    if state["stop_after"] is not None:
        n = min(n, state["stop_after"])  # the model emitted EOS first
    self.send_response(200)
    self.send_header("Content-Type", "application/x-ndjson")
    self.end_headers()
    time.sleep(PREFILL_S)
    chat = self.path == "/api/chat"
    # With `think: true` the first half is thinking: the runner samples it like any token (it
    # counts in eval_count), and the server moves it to `thinking` (server/routes.go).
    thinking = n // 2 if request.get("think") is True else 0
    for i in range(n):
        chunk: dict[str, Any] = {
            "model": request["model"],
            "created_at": "2025-10-17T23:14:07Z",
            "done": False,
        }
        text = {"thinking": " hmm"} if i < thinking else {"content": " word"}
        if chat:
            chunk["message"] = {"role": "assistant", "content": "", **text}
        else:
            chunk["response"] = text.get("content", "")
            if i < thinking:
                chunk["thinking"] = text["thinking"]
        self.wfile.write(json.dumps(chunk).encode() + b"\n")
        self.wfile.flush()
        time.sleep(TOKEN_INTERVAL_S)
    name = "chat_final_chunk.json" if chat else "final_chunk.json"
    final = json.loads((FIXTURES / name).read_text())
    final.update(
        model=request["model"],
        done_reason="length" if n == int(request["options"]["num_predict"]) else "stop",
        # both runners count the cached prefix in prompt_eval_count, and time only
        # what they evaluated (tests/fixtures/ollama/README.md)
        prompt_eval_count=prompt_n,
        prompt_eval_duration=round(evaluated * PREFILL_S_PER_TOKEN * 1e9),
        eval_count=n,
        eval_duration=int(n * TOKEN_INTERVAL_S * 1e9),
        load_duration=final["load_duration"] if len(state["requests"]) == 1 else 40_000,
    )
    self.wfile.write(json.dumps(final).encode() + b"\n")


def _handler(state: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    class Handler(_JsonHandler):
        def _authorized(self) -> bool:
            state["auth"].append(self.headers.get("Authorization"))
            if state["token"] is None or (
                self.headers.get("Authorization") == f"Bearer {state['token']}"
            ):
                return True
            self._json({"error": "unauthorized"}, 401)  # an auth proxy in front of Ollama
            return False

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if not self._authorized():
                return
            if self.path == "/api/version":
                self._json({"version": ".".join(map(str, state["version"]))})
            elif self.path == "/api/ps":
                self._json(_ollama_ps(state))
            else:
                self.send_error(404)

        def do_POST(self) -> None:  # noqa: N802
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if not self._authorized():
                return
            if self.path == "/api/show":
                self._json(_ollama_show(state))
                return
            if request.get("keep_alive") == 0 and "prompt" not in request:
                # the documented unload call: {"model", "keep_alive": 0}
                state["unloaded"].append(request["model"])
                self._json({"model": request["model"], "created_at": "2025-10-17T23:14:07Z",
                            "response": "", "done": True, "done_reason": "unload"})  # fmt: skip
                return
            try:
                tokens = _ollama_tokens(state, request, self.path)
            except _OllamaError as exc:
                self._json({"error": str(exc)}, exc.status)  # api/types.go StatusError
                return
            state["requests"].append(request)
            state["paths"].append(self.path)
            state["num_ctx"] = int(request["options"]["num_ctx"])
            cached = _cached(state["slot"], tokens)
            state["slot"] = tokens
            state["cached"].append(cached)
            _ollama_stream(self, state, request, len(tokens), len(tokens) - cached)

    return Handler


@contextmanager
def replay_ollama(
    size_vram: int = 5137025024,
    *,
    version: tuple[int, int, int] = (0, 32, 15),
    token: str | None = None,
    trained_context: int = 131072,
    stop_after: int | None = None,
    capabilities: tuple[str, ...] = ("completion", "vision"),
    add_bos: bool = True,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(base URL, state) of a replaying Ollama `version` on a free loopback port: it clamps
    num_ctx to `trained_context`, stops after `stop_after` tokens (EOS) when given, and wants
    `token` as a bearer token when one is given (an auth proxy in front of it)."""
    state: dict[str, Any] = {
        "requests": [], "paths": [], "size_vram": size_vram, "unloaded": [], "auth": [],
        "version": version, "token": token, "trained_context": trained_context,
        "stop_after": stop_after, "capabilities": list(capabilities), "add_bos": add_bos,
        "num_ctx": None, "slot": [], "cached": [], "images_ignored": 0, "image_after": [],
    }  # fmt: skip
    with _serving(_handler(state)) as url:
        yield url, state


def _lmstudio_handler(state: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    """LM Studio 0.4 (or 0.3: no /api/v1) from the documented shapes (tests/fixtures/lmstudio),
    plus the `/standin/*` routes the stand-in `lms` uses where the real CLI speaks websocket."""

    class Handler(_JsonHandler):
        def _authorized(self) -> bool:
            if not self.path.startswith("/api/") or state["token"] is None:
                return True
            if self.headers.get("Authorization") == f"Bearer {state['token']}":
                return True
            self._json({"error": {"message": "Invalid or missing API token"}}, 401)
            return False

        def _route(self, request: dict[str, Any] | None) -> None:
            state["calls"].append((self.path, request))
            state["auth"].append(self.headers.get("Authorization"))
            if self.path.startswith("/api/v1/") and state["api"] == "0.3":
                self.send_error(404)
            elif not self._authorized():
                pass
            elif self.path in _LMSTUDIO_ROUTES:
                body, status = _LMSTUDIO_ROUTES[self.path](state, request or {})
                self._json(body, status)
            else:
                self.send_error(404)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._route(None)

        def do_POST(self) -> None:  # noqa: N802
            self._route(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

    return Handler


_Answer = tuple[Any, int]


def _load(state: dict[str, Any], model: str, identifier: str, context: int, **extra: Any) -> str:
    instance_id, n = identifier, 1
    while instance_id in state["instances"]:  # LM Studio numbers a second instance `key:2`
        n += 1
        instance_id = f"{identifier}:{n}"
    applied = min(context, state["max_context"])  # what a model with a shorter training does
    flash = extra.pop("flash", None)  # LM Studio's default here: on
    config = {"context_length": applied, "eval_batch_size": 512,
              "flash_attention": True if flash is None or state["flash_fixed"] else flash,
              "offload_kv_cache_to_gpu": extra.get("kv", True)}  # fmt: skip
    state["instances"][instance_id] = {"model": model, "config": config,
                                       "runtime": state["selected"], **extra}  # fmt: skip
    return instance_id


def _models(state: dict[str, Any], _request: dict[str, Any]) -> _Answer:
    template = json.loads((LMSTUDIO / "models.json").read_text())["models"][0]
    listed = []
    for key in state["models"]:
        entry = {**template, "key": key, "display_name": key, "publisher": "orch"}
        entry["loaded_instances"] = [
            {"id": iid, "config": inst["config"]}
            for iid, inst in state["instances"].items()
            if inst["model"] == key
        ]
        listed.append(entry)
    return {"models": listed}, 200


def _rest_load(state: dict[str, Any], request: dict[str, Any]) -> _Answer:
    if request["model"] not in state["models"]:
        return {"error": {"message": f"model {request['model']} not found"}}, 404
    kv = bool(request.get("offload_kv_cache_to_gpu", True))
    iid = _load(state, request["model"], request["model"], int(request.get("context_length", 4096)),
                kv=kv, flash=request.get("flash_attention"))  # fmt: skip
    answer = json.loads((LMSTUDIO / "load.json").read_text())
    answer.update(instance_id=iid)
    answer["load_config"] = dict(state["instances"][iid]["config"])
    if not request.get("echo_load_config") or not state["echo"]:
        del answer["load_config"]
    return answer, 200


def _rest_unload(state: dict[str, Any], request: dict[str, Any]) -> _Answer:
    iid = request["instance_id"]
    if state["instances"].pop(iid, None) is None:
        return {"error": {"message": f"no instance {iid}"}}, 404
    state["unloaded"].append(iid)
    return {"instance_id": iid}, 200


def _chat(state: dict[str, Any], request: dict[str, Any]) -> _Answer:
    instance = state["instances"].get(request["model"])
    if instance is None:  # LM Studio loads a model on first use (JIT), with its defaults
        if request["model"] not in state["models"]:
            return {"error": {"message": f"model {request['model']} not found"}}, 404
        instance = state["instances"][_load(state, request["model"], request["model"], 4096)]
    n = int(request["max_tokens"])
    time.sleep(PREFILL_S + n * TOKEN_INTERVAL_S)
    answer = json.loads((LMSTUDIO / "chat_completion.json").read_text())
    answer["usage"]["completion_tokens"] = n
    answer["stats"].update(time_to_first_token=PREFILL_S, generation_time=n * TOKEN_INTERVAL_S,
                           tokens_per_second=1 / TOKEN_INTERVAL_S)  # fmt: skip
    name, _, version = instance["runtime"].rpartition("@")
    answer["runtime"].update(name=name, version=version)
    answer["model_info"]["context_length"] = instance["config"]["context_length"]
    return answer, 200


# -- the stand-in lms's side (what the real CLI does through the SDK) ------------------------


def _standin_argv(state: dict[str, Any], request: dict[str, Any]) -> _Answer:
    state["lms_argv"].append(request["argv"])
    return {}, 200


def _standin_load(state: dict[str, Any], request: dict[str, Any]) -> _Answer:
    identifier = request.get("identifier") or request["model"]
    if identifier in state["instances"]:
        return {"error": f"an instance with identifier {identifier} is already loaded"}, 409
    gpu = request.get("gpu")
    _load(state, request["model"], identifier, int(request.get("context_length") or 4096),
          gpu=gpu, kv=gpu != 0)  # fmt: skip
    return {"identifier": identifier}, 200


def _standin_estimate(state: dict[str, Any], request: dict[str, Any]) -> _Answer:
    """What the SDK's estimateResourcesUsage answers (EstimatedResourcesUsage: memory
    totalBytes/totalVramBytes/confidence, passesGuardrails): weights plus a KV cache that grows
    with the context, all on the GPU at --gpu max, none at off; over `guardrail_bytes` fails."""
    total = 600 * 2**20 + int(request.get("context_length") or 4096) * 64 * 2**10
    on_gpu = total if request.get("gpu") != 0 else 0
    return {"totalBytes": total, "totalVramBytes": on_gpu, "confidence": "low",
            "passesGuardrails": total <= state["guardrail_bytes"]}, 200  # fmt: skip


def _standin_unload(state: dict[str, Any], request: dict[str, Any]) -> _Answer:
    return _rest_unload(state, {"instance_id": request["identifier"]})


def _standin_loaded(state: dict[str, Any], _request: dict[str, Any]) -> _Answer:
    return [
        {
            "identifier": iid,
            "modelKey": inst["model"],
            "path": f"orch/{inst['model']}.gguf",
            "sizeBytes": 1_000_000,
            "deviceIdentifier": None,
            "status": "idle",
            "queued": 0,
            "parallel": 4,
        }  # fmt: skip
        for iid, inst in state["instances"].items()
    ], 200


def _standin_runtimes(state: dict[str, Any], _request: dict[str, Any]) -> _Answer:
    return {"engines": state["runtimes"], "selected": {"gguf": state["selected"]}}, 200


def _standin_select(state: dict[str, Any], request: dict[str, Any]) -> _Answer:
    state["selected"] = request["spec"]
    state["selections"].append(request["spec"])
    return {}, 200


_LMSTUDIO_ROUTES: dict[str, Any] = {
    "/lmstudio-greeting": lambda _state, _request: ({"lmstudio": True}, 200),
    "/api/v1/models": _models,
    "/api/v1/models/load": _rest_load,
    "/api/v1/models/unload": _rest_unload,
    "/api/v0/chat/completions": _chat,
    "/standin/argv": _standin_argv,
    "/standin/load": _standin_load,
    "/standin/estimate": _standin_estimate,
    "/standin/unload": _standin_unload,
    "/standin/loaded": _standin_loaded,
    "/standin/models": lambda state, _request: (state["models"], 200),
    "/standin/runtimes": _standin_runtimes,
    "/standin/select": _standin_select,
}
LINUX_RUNTIMES = ("llama.cpp-linux-x86_64-vulkan-avx2@1.52.0",
                  "llama.cpp-linux-x86_64-amd-rocm-avx2@1.52.0",
                  "llama.cpp-linux-x86_64-avx2@1.52.0")  # fmt: skip


@contextmanager
def replay_lmstudio(
    runtime: str = "llama.cpp-linux-x86_64-vulkan-avx2",
    *,
    token: str | None = None,
    api: str = "0.4",
    runtimes: tuple[str, ...] = LINUX_RUNTIMES,
    models: tuple[str, ...] = ("tiny-q8_0",),
    echo: bool = True,
    max_context: int = 1 << 20,
    flash_fixed: bool = False,
    guardrail_bytes: int = 1 << 40,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(base URL, state) of a replaying LM Studio serving `models`, running `runtime` (selected,
    the latest installed version), which wants `token` when one is given. `flash_fixed`: it
    keeps flash attention on whatever the load asks (a runtime without the choice);
    `guardrail_bytes`: the most `lms load --estimate-only` says may load."""
    installed = [
        {
            "name": spec.rpartition("@")[0],
            "version": spec.rpartition("@")[2],
            "spec": spec,
            "supportedModelFormatNames": ["gguf"],
        }  # fmt: skip
        for spec in runtimes
    ]
    selected = next(r["spec"] for r in installed if r["name"] == runtime)
    state: dict[str, Any] = {
        "calls": [], "auth": [], "token": token, "api": api, "runtimes": installed,
        "selected": selected, "selections": [], "models": list(models), "instances": {},
        "unloaded": [], "echo": echo, "max_context": max_context, "lms_argv": [],
        "flash_fixed": flash_fixed, "guardrail_bytes": guardrail_bytes,
    }  # fmt: skip
    with _serving(_lmstudio_handler(state)) as url:
        yield url, state


def lms_standin(folder: Path) -> Path:
    """An executable `lms` in `folder` that runs tests/fixtures/lmstudio/lms_standin.py."""
    lms = folder / "lms"
    lms.write_text(
        f"#!{sys.executable}\nimport runpy\n"
        f"runpy.run_path({str(LMSTUDIO / 'lms_standin.py')!r}, run_name='__main__')\n"
    )
    lms.chmod(0o755)
    return lms
