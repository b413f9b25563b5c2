"""A stand-in for llama-server's streamed `/v1/completions`, on its own asyncio loop and thread.

It speaks the shape of llama.cpp's server (tools/server/server-task.cpp, llama.cpp commit
0c1e57098bba43ac29e6e3b677cdceebdd22334f as vendored in llama-cpp-python 0.3.36): one
`data:` event per token with `finish_reason: null`, a last event with `finish_reason`,
`usage` and `timings`, then `data: [DONE]`; an error mid-stream is `data: {"error": {...}}`.
The n-th request it receives (from 0) can be made slow, fail, break or hang, so a test can see
each kind show up in a load run's figures.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

TOKEN_INTERVAL_S = 0.002


@dataclass
class Script:
    """What the stand-in does with the n-th request it receives."""

    slow: dict[int, float] = field(default_factory=dict)  # n -> seconds before the first token
    http_500: set[int] = field(default_factory=set)
    stream_error: set[int] = field(default_factory=set)  # fails after a few tokens
    hang: dict[int, float] = field(default_factory=dict)  # n -> seconds of silence, then closes
    received: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def _chunk(text: str, finish: str | None) -> dict[str, Any]:
    return {"choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            "object": "text_completion", "model": "stub", "id": "cmpl-stub"}  # fmt: skip


async def _stream(writer: asyncio.StreamWriter, script: Script, n: int, body: dict[str, Any]):
    prompt = body.get("prompt")
    prompt_n = len(prompt) if isinstance(prompt, list) else 8
    gen_n = int(body.get("max_tokens", 16))
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
    await writer.drain()
    if n in script.hang:
        await asyncio.sleep(script.hang[n])
        return
    await asyncio.sleep(script.slow.get(n, 0.0))
    for i in range(gen_n):
        if n in script.stream_error and i == 3:
            writer.write(
                _event({"error": {"code": 500, "message": "stub failure", "type": "server_error"}})
            )
            return
        writer.write(_event(_chunk(f" t{i}", None)))
        await writer.drain()
        await asyncio.sleep(TOKEN_INTERVAL_S)
    final = _chunk("", "length")
    final["usage"] = {
        "completion_tokens": gen_n,
        "prompt_tokens": prompt_n,
        "total_tokens": gen_n + prompt_n,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    final["timings"] = {"prompt_n": prompt_n, "prompt_ms": 1.0, "predicted_n": gen_n,
                        "predicted_ms": gen_n * TOKEN_INTERVAL_S * 1000,
                        "predicted_per_second": 1 / TOKEN_INTERVAL_S}  # fmt: skip
    writer.write(_event(final) + b"data: [DONE]\n\n")
    await writer.drain()


async def _serve(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode().split("\r\n"):
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        body = json.loads(await reader.readexactly(length)) if length else {}
        n, script.received = script.received, script.received + 1
        script.bodies.append(body)
        script.in_flight += 1
        script.max_in_flight = max(script.max_in_flight, script.in_flight)
        try:
            if n in script.http_500:
                msg = b'{"error": {"code": 500, "message": "stub refused"}}'
                writer.write(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(msg)}\r\nConnection: close\r\n\r\n".encode()
                    + msg
                )
            else:
                await _stream(writer, script, n, body)
        finally:
            script.in_flight -= 1
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the client gave up (a timeout test): nothing to answer
    finally:
        writer.close()


@contextmanager
def stub_server(script: Script) -> Iterator[str]:
    """Serve `script` on a free port; yields the base URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        server = await asyncio.start_server(lambda r, w: _serve(script, r, w), "127.0.0.1", 0)
        holder["server"] = server
        holder["port"] = server.sockets[0].getsockname()[1]
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop)
    assert ready.wait(30), "the stub server did not start"
    try:
        yield f"http://127.0.0.1:{holder['port']}"
    finally:

        async def stop() -> None:
            holder["server"].close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
