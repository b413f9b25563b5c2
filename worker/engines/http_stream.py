"""Minimal HTTP for local engine servers: JSON calls and Server-Sent-Event streams.

Standard library only (http.client), so that no environment proxy ever sits between a client
and a server on the same box, and so that the client adds as little as possible to the timings
it measures.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    """A non-2xx answer, or a body that is not what the protocol promises."""


def _connection(url: str, timeout_s: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.netloc, timeout=timeout_s)
    return http.client.HTTPConnection(parts.netloc, timeout=timeout_s)


def _prefix(url: str) -> str:
    return urlsplit(url).path.rstrip("/")


def _get(url: str, path: str, timeout_s: float) -> tuple[int, bytes]:
    conn = _connection(url, timeout_s)
    try:
        conn.request("GET", _prefix(url) + path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get_json(url: str, path: str, *, timeout_s: float) -> Any:
    status, body = _get(url, path, timeout_s)
    if status // 100 != 2:
        raise HttpError(f"GET {path}: HTTP {status}: {body[:300]!r}")
    return json.loads(body)


def get_status(url: str, path: str, *, timeout_s: float) -> int:
    return _get(url, path, timeout_s)[0]


def post_json(url: str, path: str, body: dict[str, Any], *, timeout_s: float) -> Any:
    conn = _connection(url, timeout_s)
    try:
        conn.request("POST", _prefix(url) + path, json.dumps(body),
                     {"Content-Type": "application/json"})  # fmt: skip
        resp = conn.getresponse()
        data = resp.read()
        if resp.status // 100 != 2:
            raise HttpError(f"POST {path}: HTTP {resp.status}: {data[:300]!r}")
        return json.loads(data)
    finally:
        conn.close()


def _stream_lines(
    url: str, path: str, body: dict[str, Any], timeout_s: float, accept: str
) -> Iterator[str]:
    conn = _connection(url, timeout_s)
    try:
        headers = {"Content-Type": "application/json", "Accept": accept}
        conn.request("POST", _prefix(url) + path, json.dumps(body), headers)
        resp = conn.getresponse()
        if resp.status // 100 != 2:
            raise HttpError(f"POST {path}: HTTP {resp.status}: {resp.read()[:300]!r}")
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
    url: str, path: str, body: dict[str, Any], *, timeout_s: float
) -> Iterator[dict[str, Any]]:
    """POST `body` and yield each `data:` event's JSON as it arrives (`[DONE]` ends it)."""
    for text in _stream_lines(url, path, body, timeout_s, "text/event-stream"):
        if not text.startswith("data:"):
            continue  # blank separators, comments, `event:` lines
        payload = text[len("data:") :].strip()
        if payload == "[DONE]":
            return
        yield _event(path, payload)


def stream_ndjson(
    url: str, path: str, body: dict[str, Any], *, timeout_s: float
) -> Iterator[dict[str, Any]]:
    """POST `body` and yield each line's JSON object as it arrives (Ollama's streaming)."""
    for text in _stream_lines(url, path, body, timeout_s, "application/x-ndjson"):
        if text:
            yield _event(path, text)
