"""LM Studio 0.4 as its docs and `lms` source describe it (tests/fixtures/lmstudio/README.md):
REST load/unload with the echoed config checked, runtimes selected through a stand-in `lms`,
API tokens. The first tests each fail on the adapter that spoke the withdrawn draft API."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.result import Status
from jobs.spec import JobSpec, Workload
from tests.worker.replay_servers import (
    LMSTUDIO,
    PREFILL_S,
    TOKEN_INTERVAL_S,
    lms_standin,
    replay_lmstudio,
)
from worker.config import EngineConfig
from worker.engines import RunTarget, close_engines, get_engine
from worker.engines.lmstudio_cli import (
    LmsError,
    Runtime,
    choose_runtime,
    parse_runtime_table,
    runtime_backend,
)
from worker.errors import ConfigError

VULKAN = "llama.cpp-linux-x86_64-vulkan-avx2@1.52.0"
ROCM = "llama.cpp-linux-x86_64-amd-rocm-avx2@1.52.0"


@pytest.fixture(autouse=True)
def _close() -> Iterator[None]:
    yield
    close_engines()


def _job(backend: str = "vulkan", context: int = 4096, **update: object) -> JobSpec:
    job = JobSpec(campaign="t", host="box", engine="lmstudio", model="tiny:q8_0",
                  backend=backend, context=context,
                  workload=Workload(prompt_tokens=32, gen_tokens=20), repetitions=2)  # fmt: skip
    return job.model_copy(update=update)


def _target(url: str, **kw: object) -> RunTarget:
    return RunTarget(None, None, 60, url=url, served_model="tiny-q8_0", **kw)  # type: ignore[arg-type]


def test_rest_load_sends_the_documented_body_reuses_and_unloads_what_it_loaded() -> None:
    engine = get_engine("lmstudio")
    with replay_lmstudio() as (url, state):
        first = engine.run(_job(), _target(url))
        again = engine.run(_job(), _target(url))
        bigger = engine.run(_job(context=8192), _target(url))
        engine.close()
        left = dict(state["instances"])
    assert first.status is Status.OK, first.error
    assert again.status is Status.OK and bigger.status is Status.OK, (again.error, bigger.error)
    loads = [body for path, body in state["calls"] if path == "/api/v1/models/load"]
    # top-level fields (load.md), not the withdrawn draft's {"config": {...}}
    assert loads == [
        {
            "model": "tiny-q8_0",
            "context_length": c,
            "offload_kv_cache_to_gpu": True,
            "echo_load_config": True,
        }  # fmt: skip
        for c in (4096, 8192)
    ]
    assert state["unloaded"] == ["tiny-q8_0", "tiny-q8_0"]  # before the reload, and at close
    assert left == {}  # no instance leaked
    assert first.load_time_s == pytest.approx(9.099) and again.load_time_s is None
    details = first.engine.details
    assert details["load_config"]["context_length"] == 4096
    assert details["load_config_source"] == "load answer (echo_load_config)"
    assert details["runtime"]["name"] == "llama.cpp-linux-x86_64-vulkan-avx2"
    assert details["runtime"]["version"] == "1.52.0"
    assert first.backend_check is not None and first.backend_check.verdict == "match"
    for r in first.requests:
        assert r.ttft_source == "server" and r.ttft_s == pytest.approx(PREFILL_S)
        assert r.gen_tokens == 20
        assert r.decode_tokens_per_s == pytest.approx(1 / TOKEN_INTERVAL_S)


def test_a_context_lm_studio_did_not_apply_fails_the_job_with_the_evidence() -> None:
    engine = get_engine("lmstudio")
    with replay_lmstudio(max_context=2048) as (url, state):
        out = engine.run(_job(context=4096), _target(url))
        left = dict(state["instances"])
    assert out.status is Status.ERROR
    assert out.error and "loaded context 2048, not the job's 4096" in out.error
    assert "echo_load_config" in out.error  # where the evidence came from
    assert out.engine.details["load_config"]["context_length"] == 2048
    assert left == {} and state["unloaded"] == ["tiny-q8_0"]  # not kept, not leaked


def test_without_echo_the_loaded_config_is_read_from_the_model_list() -> None:
    with replay_lmstudio(echo=False) as (url, _state):
        out = get_engine("lmstudio").run(_job(), _target(url))
    assert out.status is Status.OK, out.error
    assert out.engine.details["load_config_source"] == "GET /api/v1/models loaded_instances"


def test_another_runtime_is_mislabelled_evidence_and_a_missing_model_a_load_failure() -> None:
    engine = get_engine("lmstudio")
    with replay_lmstudio() as (url, _state):
        wrong = engine.run(_job(backend="rocm"), _target(url))
        missing = engine.run(_job(), RunTarget(None, None, 60, url=url, served_model="glm-4.7"))
    check = wrong.backend_check
    assert wrong.status is Status.OK  # the runner makes it MISLABELLED from the check
    assert check is not None and check.verdict == "mismatch"
    assert check.source == f"LM Studio runtime {VULKAN}"
    assert "lms runtime select <name>@<version>" in check.detail  # a command that exists
    assert missing.status is Status.LOAD_FAILED
    assert missing.error and "no model 'glm-4.7' (have: tiny-q8_0)" in missing.error


def test_lm_studio_before_0_4_is_refused_with_what_to_do() -> None:
    with replay_lmstudio(api="0.3") as (url, state):
        out = get_engine("lmstudio").run(_job(), _target(url))
    assert out.status is Status.ERROR
    assert out.error and "older than 0.4.0" in out.error and "update LM Studio" in out.error
    assert [p for p, _ in state["calls"]] == ["/api/v1/models"]  # nothing was loaded


def test_the_api_token_is_sent_on_every_call_and_never_recorded() -> None:
    token = "sk-lm-orch-test-7Q2"
    engine = get_engine("lmstudio")
    with replay_lmstudio(token=token) as (url, state):
        refused = engine.run(_job(), _target(url))
        out = engine.run(_job(), _target(url, api_key=token))
        engine.close()
    assert refused.status is Status.ERROR
    assert refused.error and "HTTP 401" in refused.error and "api_key_env" in refused.error
    assert out.status is Status.OK, out.error
    sent = [auth for (path, _), auth in zip(state["calls"], state["auth"], strict=True)]
    assert sent[0] is None and set(sent[1:]) == {f"Bearer {token}"}  # unload included
    assert state["instances"] == {}
    assert token not in repr(_target(url, api_key=token))
    assert token not in repr(out) and token not in out.engine.model_dump_json()


def test_the_api_token_comes_from_an_env_variable_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {"url": "http://127.0.0.1:1234", "backends": {"vulkan": None}, "models": {"m": "m"}}
    monkeypatch.setenv("LM_API_TOKEN", "tok-env")
    from_env = EngineConfig.model_validate({**base, "api_key_env": "LM_API_TOKEN"})
    assert from_env.api_key == "tok-env"
    assert "tok-env" not in from_env.model_dump_json() and "tok-env" not in repr(from_env)
    (tmp_path / "token").write_text("tok-file\n")
    from_file = EngineConfig.model_validate({**base, "api_key_file": tmp_path / "token"})
    assert from_file.api_key == "tok-file"
    monkeypatch.delenv("LM_API_TOKEN")
    with pytest.raises(ConfigError, match="LM_API_TOKEN is not set"):
        _ = EngineConfig.model_validate({**base, "api_key_env": "LM_API_TOKEN"}).api_key
    (tmp_path / "big").write_text("a b\nc\n")
    with pytest.raises(ConfigError, match="one token on one line"):
        _ = EngineConfig.model_validate({**base, "api_key_file": tmp_path / "big"}).api_key
    with pytest.raises(ValueError, match="not both"):
        EngineConfig.model_validate({**base, "api_key_env": "X", "api_key_file": "f"})
    with pytest.raises(ValueError, match="not among this engine's backends"):
        EngineConfig.model_validate({**base, "runtimes": {"rocm": ROCM}})


# -- the lms side -------------------------------------------------------------------------


def test_lms_selects_the_runtime_loads_without_prompting_and_restores_the_selection(
    tmp_path: Path,
) -> None:
    lms = lms_standin(tmp_path)
    engine = get_engine("lmstudio")
    with replay_lmstudio() as (url, state):
        port = url.rpartition(":")[2]
        rocm = engine.run(_job(backend="rocm"), RunTarget(lms, None, 60, url=url,
                                                          served_model="tiny-q8_0"))  # fmt: skip
        during = state["selected"]
        engine.close()
    assert rocm.status is Status.OK, rocm.error
    assert during == ROCM and state["selected"] == VULKAN  # selected for the job, then put back
    assert state["selections"] == [ROCM, VULKAN]
    loads = [argv for argv in state["lms_argv"] if argv[0] == "load"]
    assert loads == [["load", "tiny-q8_0", "-y", "--context-length", "4096", "--gpu", "max",
                      "--estimate-only", "--port", port],
                     ["load", "tiny-q8_0", "-y", "--context-length", "4096", "--gpu", "max",
                      "--identifier", "orch-tiny-q8_0-4096", "--port", port]]  # fmt: skip
    assert ["unload", "orch-tiny-q8_0-4096", "--port", port] in state["lms_argv"]
    assert state["instances"] == {}
    details = rocm.engine.details
    assert details["runtime_selected"] == ROCM
    assert f"{details['runtime']['name']}@{details['runtime']['version']}" == ROCM
    assert details["gpu_offload"] == "max"
    assert [e["identifier"] for e in details["lms_ps"]] == ["orch-tiny-q8_0-4096"]
    assert rocm.backend_check is not None and rocm.backend_check.verdict == "match"


def test_a_runtime_change_reloads_the_model_and_the_same_runtime_reuses_it(tmp_path: Path) -> None:
    lms = lms_standin(tmp_path)
    engine = get_engine("lmstudio")
    with replay_lmstudio() as (url, state):
        target = RunTarget(lms, None, 60, url=url, served_model="tiny-q8_0")
        outs = [engine.run(_job(backend=b), target) for b in ("vulkan", "vulkan", "rocm", "cpu")]
        engine.close()
    assert [o.status for o in outs] == [Status.OK] * 4, [o.error for o in outs]
    loads = [a for a in state["lms_argv"] if a[0] == "load" and "--estimate-only" not in a]
    assert len(loads) == 3  # vulkan reused once
    cpu = loads[-1]
    assert cpu[cpu.index("--gpu") + 1] == "off"
    assert outs[3].engine.details["runtime"]["name"] == "llama.cpp-linux-x86_64-avx2"
    assert state["selected"] == VULKAN and state["instances"] == {}


def test_lms_load_y_picking_another_model_is_caught(tmp_path: Path) -> None:
    """`-y` loads the first fuzzy match (load.ts): here the vision model, listed first."""
    lms = lms_standin(tmp_path)
    with replay_lmstudio(models=("tiny-q8_0-vision", "tiny-q8_0")) as (url, state):
        out = get_engine("lmstudio").run(
            _job(), RunTarget(lms, None, 60, url=url, served_model="tiny-q8_0")
        )
    assert out.status is Status.LOAD_FAILED
    assert out.error and "loaded tiny-q8_0-vision as orch-tiny-q8_0-4096" in out.error
    assert state["instances"] == {}  # unloaded again


def test_the_standin_fails_where_the_real_lms_would(tmp_path: Path) -> None:
    lms = lms_standin(tmp_path)
    with replay_lmstudio(models=("tiny-q8_0-vision", "tiny-q8_0")) as (url, state):
        port = ["--port", url.rpartition(":")[2]]

        def lms_run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(lms), *args, *port], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip

        prompted = lms_run("load", "tiny-q8_0")  # two keys match: the interactive picker
        assert prompted.returncode == 1 and state["instances"] == {}
        assert "Multiple models match" in prompted.stdout
        assert lms_run("load", "tiny-q8_0", "--gpu", "most").returncode == 1
        no_name = lms_run("runtime", "select")
        assert no_name.returncode == 1 and "[alias] or --latest" in no_name.stderr
        assert lms_run("runtime", "select", "llama.cpp-linux-x86_64-avx2").returncode == 0
        assert lms_run("unload", "never-loaded").returncode == 0  # as unload.ts: exit 0
        table = lms_run("runtime", "ls").stdout
    assert [r.spec for r in parse_runtime_table(table) if r.selected] == [
        "llama.cpp-linux-x86_64-avx2@1.52.0"
    ]
    no_port = subprocess.run([str(lms), "runtime", "ls"], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    assert no_port.returncode == 1


def test_runtime_table_labels_and_choice() -> None:
    rows = parse_runtime_table((LMSTUDIO / "runtime_ls.txt").read_text())
    assert [(r.spec, r.selected) for r in rows] == [
        ("llama.cpp-linux-x86_64-amd-rocm-avx2@1.52.0", False),
        ("llama.cpp-linux-x86_64-amd-rocm-avx2@1.50.2", False),
        ("llama.cpp-linux-x86_64-avx2@1.52.0", False),
        (VULKAN, True),
    ]
    assert rows[0].formats == ("gguf",)
    assert [runtime_backend(r.name) for r in rows] == ["rocm", "rocm", "cpu", "vulkan"]
    assert runtime_backend("llama.cpp-mac-arm64-apple-metal-advsimd") == "metal"  # docs' name
    assert runtime_backend("mlx-llm-mac-arm64-apple-metal-advsimd") == "mlx"
    assert runtime_backend("llama.cpp-win-x86_64-nvidia-cuda12-avx2") == "cuda"
    assert choose_runtime(rows, "rocm", None).version == "1.52.0"  # the latest
    assert choose_runtime(rows, "rocm", f"{ROCM.rpartition('@')[0]}@1.50.2").version == "1.50.2"
    assert choose_runtime(rows, "vulkan", None).selected
    # `hip` is ROCm in jobs/backends.py, and so here
    assert choose_runtime(rows, "hip", None).spec == "llama.cpp-linux-x86_64-amd-rocm-avx2@1.52.0"
    with pytest.raises(LmsError, match="`lms runtime get`"):
        choose_runtime(rows, "cuda", None)
    with pytest.raises(LmsError, match="is a vulkan runtime, pinned for backend rocm"):
        choose_runtime(rows, "rocm", VULKAN)
    two = [*rows, Runtime("llama.cpp-linux-x86_64-vulkan-avx512", "1.0.0", False, ("gguf",))]
    with pytest.raises(LmsError, match="engines.lmstudio.runtimes.vulkan"):
        choose_runtime(two, "vulkan", None)


# -- engine options and LM Studio's own estimate ----------------------------------------------


def test_flash_attention_and_kv_offload_go_into_the_rest_load_and_are_checked() -> None:
    engine = get_engine("lmstudio")
    with replay_lmstudio() as (url, state):
        out = engine.run(_job(flash_attention="off", kv_offload=False), _target(url))
        engine.close()
    assert out.status is Status.OK, out.error
    load = next(body for path, body in state["calls"] if path == "/api/v1/models/load")
    assert load["flash_attention"] is False and load["offload_kv_cache_to_gpu"] is False
    assert out.engine.details["load_config"]["flash_attention"] is False


def test_flash_attention_lm_studio_did_not_apply_fails_with_the_echoed_config() -> None:
    with replay_lmstudio(flash_fixed=True) as (url, state):
        out = get_engine("lmstudio").run(_job(flash_attention="off"), _target(url))
    assert out.status is Status.ERROR
    assert out.error and "flash attention on, against the job" in out.error
    assert "echo_load_config" in out.error and state["instances"] == {}


def test_lms_cannot_set_flash_attention_so_the_job_is_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    lms = lms_standin(tmp_path)
    with replay_lmstudio() as (url, state):
        out = get_engine("lmstudio").run(
            _job(kv_offload=False), RunTarget(lms, None, 60, url=url, served_model="tiny-q8_0")
        )
    assert out.status is Status.ERROR
    assert out.error and "`lms load` has no flash-attention or KV-cache flag" in out.error
    assert not [a for a in state["lms_argv"] if a[0] == "load"]  # nothing loaded


def test_lms_estimate_is_recorded_and_a_load_it_says_will_fail_is_not_tried(
    tmp_path: Path,
) -> None:
    lms = lms_standin(tmp_path)
    engine = get_engine("lmstudio")
    target = lambda url: RunTarget(lms, None, 60, url=url, served_model="tiny-q8_0")  # noqa: E731
    # 600 MiB of weights + 64 KiB per token: 4096 tokens need 856 MiB, 8192 need 1112 MiB
    with replay_lmstudio(guardrail_bytes=1000 * 2**20) as (url, state):
        fits = engine.run(_job(context=4096), target(url))
        too_big = engine.run(_job(context=8192), target(url))
        engine.close()
    assert fits.status is Status.OK, fits.error
    estimate = fits.engine.details["lms_estimate"]
    assert estimate["passes_guardrails"] is True and estimate["low_confidence"] is True
    assert estimate["estimated_total_bytes"] == 856 * 2**20
    assert estimate["estimated_gpu_bytes"] == 856 * 2**20  # --gpu max
    assert too_big.status is Status.LOAD_FAILED
    assert too_big.error and "will not load here" in too_big.error
    assert "total 1.09 GiB" in too_big.error
    assert too_big.engine.details["lms_estimate"]["passes_guardrails"] is False
    loads = [a for a in state["lms_argv"] if a[0] == "load" and "--estimate-only" not in a]
    assert [a[a.index("--context-length") + 1] for a in loads] == ["4096"]  # 8192 never tried


def test_the_standin_prints_its_estimate_on_stderr_as_lms_does(tmp_path: Path) -> None:
    lms = lms_standin(tmp_path)
    with replay_lmstudio() as (url, _state):
        port = url.rpartition(":")[2]
        done = subprocess.run(
            [str(lms), "load", "tiny", "-y", "-c", "4096", "--gpu", "off", "--estimate-only",
             "--port", port], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0 and done.stdout == ""
    assert "Context Length: 4,096\nGPU Offload: 0%\nEstimated GPU Memory:   0 Bytes" in done.stderr
    assert "Estimated Total Memory: 856.00 MiB" in done.stderr
