"""Minimal HTTP for local engine servers: JSON calls and Server-Sent-Event streams.

Standard library only (http.client), so that no environment proxy ever sits between a client
and a server on the same box, and so that the client adds as little as possible to the timings
it measures.

Every call takes an optional `token`, sent as `Authorization: Bearer <token>` (LM Studio 0.4's
API tokens, an Ollama or vLLM behind an authenticating proxy). It goes into the request headers
only: no error message, log line or result ever carries it.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    """A non-2xx answer (`status` set), or a body that is not what the protocol promises."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _headers(token: str | None, **extra: str) -> dict[str, str]:
    if token:
        extra["Authorization"] = f"Bearer {token}"
    return extra


def _refused(method: str, path: str, status: int, body: bytes, token: str | None) -> HttpError:
    hint = ""
    if status in (401, 403):
        # What the user can change: the token orch sends (never the token itself).
        hint = (
            " (the server wants an API token: set api_key_env or api_key_file for this engine "
            "in worker.yaml)"
            if not token
            else " (the server refused the API token from worker.yaml)"
        )
    return HttpError(f"{method} {path}: HTTP {status}{hint}: {body[:300]!r}", status)


def _connection(url: str, timeout_s: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.netloc, timeout=timeout_s)
    return http.client.HTTPConnection(parts.netloc, timeout=timeout_s)


def _prefix(url: str) -> str:
    return urlsplit(url).path.rstrip("/")


def _get(url: str, path: str, timeout_s: float, token: str | None) -> tuple[int, bytes]:
    conn = _connection(url, timeout_s)
    try:
        conn.request("GET", _prefix(url) + path, headers=_headers(token))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get_json(url: str, path: str, *, timeout_s: float, token: str | None = None) -> Any:
    status, body = _get(url, path, timeout_s, token)
    if status // 100 != 2:
        raise _refused("GET", path, status, body, token)
    return json.loads(body)


def get_status(url: str, path: str, *, timeout_s: float, token: str | None = None) -> int:
    return _get(url, path, timeout_s, token)[0]


def post_json(
    url: str, path: str, body: dict[str, Any], *, timeout_s: float, token: str | None = None
) -> Any:
    conn = _connection(url, timeout_s)
    try:
        headers = _headers(token, **{"Content-Type": "application/json"})
        conn.request("POST", _prefix(url) + path, json.dumps(body), headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status // 100 != 2:
            raise _refused("POST", path, resp.status, data, token)
        return json.loads(data)
    finally:
        conn.close()


def _stream_lines(
    url: str, path: str, body: dict[str, Any], timeout_s: float, accept: str, token: str | None
) -> Iterator[str]:
    conn = _connection(url, timeout_s)
    try:
        headers = _headers(token, **{"Content-Type": "application/json", "Accept": accept})
        conn.request("POST", _prefix(url) + path, json.dumps(body), headers)
        resp = conn.getresponse()
        if resp.status // 100 != 2:
            raise _refused("POST", path, resp.status, resp.read(), token)
        while True:
            line = resp.readline()
            if not line:
                return
            yield line.decode("utf-8", errors="replace").strip()
    finally:
        conn.close()


def _event(path: str, payload: str) -> dict[str, Any]:
    event = json.loads(payload)
    if not isinstance(event, dict):
        raise HttpError(f"POST {path}: expected a JSON object per event, got {payload[:100]!r}")
    if "error" in event:
        raise HttpError(f"POST {path}: server error: {event['error']}")
    return event


def stream_sse(
    url: str, path: str, body: dict[str, Any], *, timeout_s: float, token: str | None = None
) -> Iterator[dict[str, Any]]:
    """POST `body` and yield each `data:` event's JSON as it arrives (`[DONE]` ends it)."""
    for text in _stream_lines(url, path, body, timeout_s, "text/event-stream", token):
        if not text.startswith("data:"):
            continue  # blank separators, comments, `event:` lines
        payload = text[len("data:") :].strip()
        if payload == "[DONE]":
            return
        yield _event(path, payload)


def stream_ndjson(
    url: str, path: str, body: dict[str, Any], *, timeout_s: float, token: str | None = None
) -> Iterator[dict[str, Any]]:
    """POST `body` and yield each line's JSON object as it arrives (Ollama's streaming)."""
    for text in _stream_lines(url, path, body, timeout_s, "application/x-ndjson", token):
        if text:
            yield _event(path, text)
