"""Local stand-ins for Ollama and LM Studio (which cannot be installed here), serving the payload
shapes their documentation gives (see tests/fixtures/ollama/ and tests/fixtures/lmstudio/). They
answer at a fixed pace so that client timing has something real to measure, and compute their
own figures from that pace.
"""

from __future__ import annotations

import json
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


def _handler(state: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    class Handler(_JsonHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/api/version":
                self._json({"version": "0.12.6"})
            elif self.path == "/api/ps":
                ps = json.loads((FIXTURES / "ps.json").read_text())
                ps["models"][0]["size_vram"] = state["size_vram"]
                self._json(ps)
            else:
                self.send_error(404)

        def do_POST(self) -> None:  # noqa: N802
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if request.get("keep_alive") == 0 and "prompt" not in request:
                # the documented unload call: {"model", "keep_alive": 0}
                state["unloaded"].append(request["model"])
                self._json({"model": request["model"], "created_at": "2025-10-17T23:14:07Z",
                            "response": "", "done": True, "done_reason": "unload"})  # fmt: skip
                return
            state["requests"].append(request)
            n = int(request["options"]["num_predict"])
            prompt_n = len(request["prompt"].split())
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()
            time.sleep(PREFILL_S)
            for _ in range(n):
                chunk = {"model": request["model"], "created_at": "2025-10-17T23:14:07Z",
                         "response": " word", "done": False}  # fmt: skip
                self.wfile.write(json.dumps(chunk).encode() + b"\n")
                self.wfile.flush()
                time.sleep(TOKEN_INTERVAL_S)
            final = json.loads((FIXTURES / "final_chunk.json").read_text())
            final.update(
                model=request["model"],
                prompt_eval_count=prompt_n,
                prompt_eval_duration=int(PREFILL_S * 1e9),
                eval_count=n,
                eval_duration=int(n * TOKEN_INTERVAL_S * 1e9),
                load_duration=final["load_duration"] if len(state["requests"]) == 1 else 40_000,
            )
            self.wfile.write(json.dumps(final).encode() + b"\n")

    return Handler


@contextmanager
def replay_ollama(size_vram: int = 5137025024) -> Iterator[tuple[str, dict[str, Any]]]:
    """(base URL, state) of a replaying Ollama on a free loopback port."""
    state: dict[str, Any] = {"requests": [], "size_vram": size_vram, "unloaded": []}
    with _serving(_handler(state)) as url:
        yield url, state


def _lmstudio_handler(state: dict[str, Any]) -> type[BaseHTTPRequestHandler]:
    class Handler(_JsonHandler):
        def do_POST(self) -> None:  # noqa: N802
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["calls"].append((self.path, request))
            if self.path == "/api/v1/models/load":
                if request["model"] not in state["models"]:
                    self._json({"error": {"message": f"model {request['model']} not found"}}, 404)
                    return
                answer = json.loads((LMSTUDIO / "load.json").read_text())
                answer["config"]["context_length"] = request["config"]["context_length"]
                answer["model_instance_id"] = request["model"]
                state["context"] = request["config"]["context_length"]
                self._json(answer)
            elif self.path == "/api/v1/models/unload":
                self._json({"instance_id": request["instance_id"]})
            elif self.path == "/api/v0/chat/completions":
                n = int(request["max_tokens"])
                time.sleep(PREFILL_S + n * TOKEN_INTERVAL_S)
                answer = json.loads((LMSTUDIO / "chat_completion.json").read_text())
                answer["usage"]["completion_tokens"] = n
                answer["stats"].update(
                    time_to_first_token=PREFILL_S,
                    generation_time=n * TOKEN_INTERVAL_S,
                    tokens_per_second=1 / TOKEN_INTERVAL_S,
                )
                answer["runtime"]["name"] = state["runtime"]
                answer["model_info"]["context_length"] = state.get("context", 4096)
                self._json(answer)
            else:
                self.send_error(404)

    return Handler


@contextmanager
def replay_lmstudio(
    runtime: str = "llama.cpp-linux-x86_64-vulkan-avx2",
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(base URL, state) of a replaying LM Studio serving the model key `tiny-q8_0`."""
    state: dict[str, Any] = {"calls": [], "runtime": runtime, "models": {"tiny-q8_0"}}
    with _serving(_lmstudio_handler(state)) as url:
        yield url, state
