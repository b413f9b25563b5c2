"""The Ollama adapter against a replaying Ollama built from its source (tests/fixtures/ollama):
vision that the server consumes, a clamped context, an early stop, pp from uncached tokens,
think off, /api/show recorded, versions before and after 0.30, and an auth token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.result import Status
from jobs.spec import JobSpec, Workload
from tests.worker.replay_servers import IMAGE_TOKENS, PREFILL_S_PER_TOKEN, replay_ollama
from worker.engines import RunTarget, close_engines, get_engine
from worker.engines.base import EngineOutcome
from worker.engines.ollama import parse_version

PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
OLD, NEW = (0, 24, 0), (0, 32, 15)


@pytest.fixture(autouse=True)
def _fresh_adapter() -> Iterator[None]:
    close_engines()  # the adapter remembers servers per URL: none from another test
    yield
    close_engines()


def _job(context: int = 4096, gen_tokens: int = 20, **work: object) -> JobSpec:
    return JobSpec(
        campaign="t",
        host="box",
        engine="ollama",
        model="tiny:q8_0",
        backend="rocm",
        context=context,
        workload=Workload(**{"prompt_tokens": 32, "gen_tokens": gen_tokens, **work}),  # type: ignore[arg-type]
        repetitions=3,
    )


def _run(url: str, job: JobSpec, **target: object) -> EngineOutcome:
    return get_engine("ollama").run(
        job,
        RunTarget(None, None, 60, url=url, served_model="tiny:q8_0", **target),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("version", [OLD, NEW])
def test_vision_goes_through_chat_and_the_server_consumes_the_image(
    tmp_path: Path, version: tuple[int, int, int]
) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(PNG_1PX)
    with replay_ollama(version=version) as (url, state):
        out = _run(url, _job(image="cat"), image=image)
    assert out.status is Status.OK, out.error
    # The old raw+images request: ignored up to 0.24, refused since 0.30. Here every request
    # put the image where the server turns it into image tokens, after the unique first word.
    assert state["images_ignored"] == 0
    assert len(state["image_after"]) == 4
    assert len(set(state["image_after"])) == 4  # after each request's own first word
    for sample in out.requests:
        assert sample.prompt_tokens > IMAGE_TOKENS
        # the chat template's cached head is not reported: no pp, flagged
        assert sample.cached_prompt
    assert [m.test for m in out.measurements] == ["tg"]
    assert out.engine.details["capabilities"] == ["completion", "vision"]


def test_an_image_in_a_raw_prompt_is_what_the_replay_refuses_since_0_30() -> None:
    """The replay tells the documented path from the old one (so the test above can fail)."""
    from worker.engines.http_stream import HttpError, post_json, stream_ndjson

    body = {"model": "m", "prompt": "hi", "raw": True, "images": ["AA=="], "stream": False,
            "options": {"num_ctx": 64, "num_predict": 1}}  # fmt: skip
    with replay_ollama(version=NEW) as (url, _):
        with pytest.raises(HttpError, match="HTTP 500"):
            post_json(url, "/api/generate", body, timeout_s=10)
    with replay_ollama(version=OLD) as (url, state):
        chunks = list(stream_ndjson(url, "/api/generate", body, timeout_s=10))
    assert chunks[-1]["done"] is True
    assert state["images_ignored"] == 1


def test_a_model_without_vision_fails_a_vision_job_before_measuring(tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(PNG_1PX)
    with replay_ollama(capabilities=("completion",)) as (url, state):
        out = _run(url, _job(image="cat"), image=image)
    assert out.status is Status.ERROR
    assert out.error and "cannot take an image" in out.error and "['completion']" in out.error
    assert state["requests"] == []


def test_a_clamped_context_fails_the_job_with_the_evidence() -> None:
    with replay_ollama(trained_context=2048) as (url, _):
        out = _run(url, _job(context=8192))
    assert out.status is Status.ERROR
    assert out.error and "2048-token context, not the job's 8192" in out.error
    assert "trained context: 2048" in out.error
    assert out.engine.details["context_length"] == 2048
    assert out.engine.details["context_check"] == "clamped"
    assert len(out.requests) == 3  # what was measured is kept, for the record

    with replay_ollama(trained_context=2048) as (url, _):
        fits = _run(url, _job(context=2048))
    assert fits.status is Status.OK, fits.error
    assert fits.engine.details["context_check"] == "ok"


def test_context_length_not_reported_before_0_10_is_recorded_not_failed() -> None:
    with replay_ollama(version=(0, 9, 6), trained_context=2048) as (url, _):
        out = _run(url, _job(context=8192))
    assert out.status is Status.OK, out.error
    assert out.engine.details["context_length"] is None
    assert "since Ollama 0.10" in out.engine.details["context_check"]


def test_early_stops_stay_out_of_tg_and_all_early_fails() -> None:
    with replay_ollama(stop_after=7) as (url, _):
        out = _run(url, _job(gen_tokens=20))
    assert out.status is Status.ERROR
    assert out.error and "stopped before the job's 20 tokens" in out.error
    assert "done_reason 'stop' after 7" in out.error
    assert out.engine.details["early_stops"] == 3

    with replay_ollama(stop_after=20) as (url, _):
        full = _run(url, _job(gen_tokens=20))
    assert full.status is Status.OK, full.error
    assert full.engine.details["early_stops"] == 0
    assert full.engine.details["done_reasons"] == ["length"]


def test_measurements_drop_short_replies_from_tg_only() -> None:
    from jobs.result import RequestSample

    def sample(gen: int) -> RequestSample:
        timings = {"prompt_eval_count": 33.0, "prompt_eval_duration": 1e7,
                   "prompt_cached_tokens": 1.0, "eval_count": float(gen),
                   "eval_duration": gen * 1e7}  # fmt: skip
        return RequestSample(prompt_tokens=33, gen_tokens=gen, ttft_s=0.1, e2e_s=0.5,
                             decode_tokens_per_s=None, server_timings=timings)  # fmt: skip

    engine = get_engine("ollama")
    short, full = sample(7), sample(20)
    got = {m.test: m for m in engine.measurements(_job(gen_tokens=20), [full, short, full])}  # type: ignore[attr-defined]
    assert len(got["pp"].samples_ts) == 3  # prefill does not depend on where decoding ended
    assert got["pp"].samples_ts[0] == pytest.approx(32 / 0.01)  # the cached BOS left out
    assert len(got["tg"].samples_ts) == 2


@pytest.mark.parametrize("version", [OLD, NEW])
@pytest.mark.parametrize("add_bos", [True, False])
def test_pp_counts_only_uncached_tokens(version: tuple[int, int, int], add_bos: bool) -> None:
    with replay_ollama(version=version, add_bos=add_bos) as (url, state):
        out = _run(url, _job())
    assert out.status is Status.OK, out.error
    assert state["cached"][1:] == [int(add_bos)] * 3
    pp = next(m for m in out.measurements if m.test == "pp")
    assert pp.samples_ts == pytest.approx([1 / PREFILL_S_PER_TOKEN] * 3)
    assert out.engine.details["runner"] == (
        "llama-server" if version >= (0, 30) else "ollama runner"
    )
    assert out.engine.details["version"] == ".".join(map(str, version))


def test_think_is_sent_off_and_show_is_recorded() -> None:
    with replay_ollama() as (url, state):
        out = _run(url, _job())
    assert out.status is Status.OK, out.error
    assert all(r["think"] is False for r in state["requests"])
    assert state["paths"] == ["/api/generate"] * 4
    assert all(r["raw"] is True for r in state["requests"])
    info = out.engine.details["model_info"]
    assert info["llama.context_length"] == 131072
    assert info["general.architecture"] == "llama"
    assert "tokenizer.ggml.eos_token_ids" not in info  # arrays are left out (they can be huge)


def test_the_api_key_goes_on_every_call_and_is_refused_without_it() -> None:
    with replay_ollama(token="s3cret") as (url, state):
        out = _run(url, _job(), api_key="s3cret")
        close_engines()  # the unload, too
    assert out.status is Status.OK, out.error
    assert state["unloaded"] == ["tiny:q8_0"]
    assert state["auth"] and set(state["auth"]) == {"Bearer s3cret"}

    with replay_ollama(token="s3cret") as (url, state):
        refused = _run(url, _job())
    assert refused.status is Status.ERROR
    assert refused.error and "HTTP 401" in refused.error and "api_key_env" in refused.error
    assert "s3cret" not in refused.error


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("0.30.1", (0, 30, 1)), ("0.12.6-rc1", (0, 12, 6)), ("v0.9.0", (0, 9, 0)), ("dev", None),
     (None, None)],
)  # fmt: skip
def test_parse_version(text: object, parsed: tuple[int, int, int] | None) -> None:
    assert parse_version(text) == parsed


def test_think_on_is_sent_and_the_thinking_counts_as_generated_tokens() -> None:
    with replay_ollama(capabilities=("completion", "thinking")) as (url, state):
        out = _run(url, _job().model_copy(update={"think": "on"}))
    assert out.status is Status.OK, out.error
    assert all(r["think"] is True for r in state["requests"])
    assert out.engine.details["think"] is True
    # the replay thinks for half of the 20 tokens: all 20 are generated, and counted
    assert [r.gen_tokens for r in out.requests] == [20, 20, 20]
    tg = next(m for m in out.measurements if m.test == "tg")
    assert len(tg.samples_ts) == 3  # full-length replies, none dropped as early stops


def test_think_on_for_a_model_that_does_not_think_fails_before_measuring() -> None:
    with replay_ollama() as (url, state):  # capabilities: completion, vision
        out = _run(url, _job().model_copy(update={"think": "on"}))
    assert out.status is Status.ERROR
    assert out.error and "does not think" in out.error and "'vision'" in out.error
    assert state["requests"] == []
