"""Engines behind a URL: Ollama (documented payloads, replayed) and OpenAI-compatible servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.result import Status
from jobs.spec import JobSpec, Workload
from tests.worker.replay_servers import (
    PREFILL_S,
    PREFILL_S_PER_TOKEN,
    TOKEN_INTERVAL_S,
    replay_ollama,
)
from worker.engines import RunTarget, get_engine


def _job(engine: str, backend: str = "rocm", **work: object) -> JobSpec:
    return JobSpec(
        campaign="t",
        host="box",
        engine=engine,
        model="tiny:q8_0",
        backend=backend,
        context=4096,
        workload=Workload(**{"prompt_tokens": 32, "gen_tokens": 20, **work}),  # type: ignore[arg-type]
        repetitions=3,
    )


def test_ollama_request_options_timings_and_offload() -> None:
    with replay_ollama() as (url, state):
        outcome = get_engine("ollama").run(
            _job("ollama"), RunTarget(None, None, 60, url=url, served_model="tiny:q8_0")
        )
        get_engine("llama-bench")  # another engine is next: Ollama is asked to unload the model
        assert state["unloaded"] == ["tiny:q8_0"]
    assert outcome.status is Status.OK, outcome.error
    sent = state["requests"]
    assert len(sent) == 4  # one warm-up + 3 measured
    assert all(r["options"]["num_ctx"] == 4096 and r["options"]["num_predict"] == 20 for r in sent)
    assert "num_gpu" not in sent[0]["options"]  # a GPU backend: Ollama decides the offload
    assert len({r["prompt"] for r in sent}) == 4  # unique prefixes: no prompt-cache hits
    # nanosecond durations become seconds and rates
    assert outcome.load_time_s == pytest.approx(0.101397084)
    # pp over the tokens Ollama evaluated: its count includes the cached BOS, its duration not
    assert state["cached"][1:] == [1, 1, 1]  # the unique first words leave only the BOS shared
    pp = next(m for m in outcome.measurements if m.test == "pp")
    for rate, sample in zip(pp.samples_ts, outcome.requests, strict=True):
        assert rate == pytest.approx(1 / PREFILL_S_PER_TOKEN)
        assert rate < sample.prompt_tokens / (sample.server_timings["prompt_eval_duration"] / 1e9)
    # tg is Ollama's own eval rate (eval_count over eval_duration), not the client's timing,
    # so a client starved on a busy box cannot lose or distort it
    tg = next(m for m in outcome.measurements if m.test == "tg")
    for rate, sample in zip(tg.samples_ts, outcome.requests, strict=True):
        timings = sample.server_timings
        assert rate == pytest.approx(timings["eval_count"] / (timings["eval_duration"] / 1e9))
    for r in outcome.requests:
        assert r.gen_tokens == 20
        assert r.ttft_s >= PREFILL_S  # the client cannot see a token before the server sends it
        assert r.decode_tokens_per_s is not None
        # paced by the server's stream (margin: a late first read can shorten the span)
        assert r.decode_tokens_per_s < 1.2 / TOKEN_INTERVAL_S
    details = outcome.engine.details
    assert details["version"] == "0.32.15"
    assert details["partial_offload"] is False and details["gpu_fraction"] == 1.0


def test_ollama_partial_and_cpu_only_offload_are_recorded() -> None:
    with replay_ollama(size_vram=2_000_000_000) as (url, _):
        partial = get_engine("ollama").run(
            _job("ollama"), RunTarget(None, None, 60, url=url, served_model="tiny:q8_0")
        )
    assert partial.status is Status.OK
    assert partial.engine.details["partial_offload"] is True
    assert partial.engine.details["gpu_fraction"] == pytest.approx(2_000_000_000 / 5137025024)

    with replay_ollama(size_vram=0) as (url, state):
        cpu_only = get_engine("ollama").run(
            _job("ollama"), RunTarget(None, None, 60, url=url, served_model="tiny:q8_0")
        )
    # Measured, but not on a GPU: the runner files it as mislabelled (test_backend_check.py)
    assert cpu_only.status is Status.OK
    check = cpu_only.backend_check
    assert check is not None and check.verdict == "mismatch" and check.vram_bytes == 0
    assert "size_vram 0 of size 5137025024" in check.source

    with replay_ollama(size_vram=0) as (url, state):
        asked_cpu = get_engine("ollama").run(
            _job("ollama", backend="cpu"),
            RunTarget(None, None, 60, url=url, served_model="tiny:q8_0"),
        )
    assert asked_cpu.status is Status.OK
    assert state["requests"][0]["options"]["num_gpu"] == 0
    assert asked_cpu.backend_check is not None
    assert asked_cpu.backend_check.verdict == "match"
    assert asked_cpu.backend_check.gpu_layers_requested == 0
    # On a GPU (size_vram > 0), Ollama still names no GPU library: kept, unverified.
    assert partial.backend_check is not None
    assert partial.backend_check.verdict == "unverified"
    assert "does not say which backend" in partial.backend_check.detail


def test_a_server_that_is_not_there_is_an_error_result() -> None:
    target = RunTarget(None, None, 5, url="http://127.0.0.1:1", served_model="x")
    for engine in ("ollama", "openai"):
        outcome = get_engine(engine).run(_job(engine), target)
        assert outcome.status is Status.ERROR
        assert outcome.error and "http://127.0.0.1:1" in outcome.error


def test_openai_route_of_a_real_llama_server_reports_usage_and_timings(
    llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    from worker.engines.server_process import ServerProcess, free_port

    argv = [str(llama_bin / "llama-server"), "-m", str(tiny_models["tiny:q8_0"]),
            "--host", "127.0.0.1", "--port", str(free_port()), "-c", "2048", "-t", "1"]  # fmt: skip
    server = ServerProcess(argv)
    server.start()
    try:
        assert server.wait_ready(60), server.log_tail()
        outcome = get_engine("openai").run(
            _job("openai", backend="cpu", prompt_text="Write a haiku about boxes"),
            RunTarget(None, None, 60, url=server.url + "/v1", served_model="tiny"),
        )
    finally:
        server.stop()
    assert outcome.status is Status.OK, outcome.error
    assert len(outcome.requests) == 3  # the job's repetitions, warm-up not counted
    for r in outcome.requests:
        assert r.gen_tokens == 20  # usage.completion_tokens
        assert r.prompt_tokens > 5  # the chat template wraps the text
        assert r.server_timings["predicted_n"] == 20  # llama-server's own timings kept
        assert r.server_timings["prompt_ms"] / 1000 <= r.ttft_s
    assert outcome.engine.details["served_models"]


PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def test_a_vision_workload_sends_the_image_to_each_engine_that_takes_one(tmp_path: Path) -> None:
    import base64
    import json

    from tests.worker.replay_servers import replay_lmstudio

    image = tmp_path / "cat.png"
    image.write_bytes(PNG_1PX)
    b64 = base64.b64encode(PNG_1PX).decode()

    with replay_ollama() as (url, state):
        out = get_engine("ollama").run(
            _job("ollama", image="cat"),
            RunTarget(None, None, 60, url=url, served_model="tiny:q8_0", image=image),
        )
    assert out.status is Status.OK, out.error
    # the documented path: /api/chat, the image in messages[].images (tests/worker/test_ollama.py
    # checks that the replaying server consumed it)
    assert state["paths"] == ["/api/chat"] * 4
    assert all(r["messages"][0]["images"] == [b64] for r in state["requests"])

    with replay_lmstudio() as (url, state):
        engine = get_engine("lmstudio")
        out = engine.run(
            _job("lmstudio", backend="vulkan", image="cat"),
            RunTarget(None, None, 60, url=url, served_model="tiny-q8_0", image=image),
        )
        engine.close()
    assert out.status is Status.OK, out.error
    chats = [body for path, body in state["calls"] if path == "/api/v0/chat/completions"]
    for body in chats:
        [message] = body["messages"]
        assert message["content"][1] == {
            "type": "image_url",
            "image_url": {"url": f"data:image/png;base64,{b64}"},
        }
    assert json.dumps(chats[0]).count(b64) == 1


def test_the_server_a_loopback_url_names_is_found_by_its_port() -> None:
    # A served engine's server is not the worker's child: found by the port it listens on, its
    # CPU is the engine's (telemetry, disturbance check), not "another process".
    import os
    import socket

    from worker.engines.served import listening_pid

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert listening_pid(f"http://127.0.0.1:{port}/v1") == os.getpid()
        assert listening_pid(f"http://localhost:{port}") == os.getpid()
    assert listening_pid(f"http://127.0.0.1:{port}") is None  # nobody listens any more
    assert listening_pid(f"http://192.0.2.7:{port}") is None  # another box: not ours to watch
