"""`orch import llama-bench`, `orch compare` and `orch campaigns`, through the CLI in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from orchestrator.cli import cli
from orchestrator.errors import StoreError
from orchestrator.report import build_pivot, render
from orchestrator.report.importers.llama_bench import import_llama_bench
from orchestrator.report.pivot import ReportError
from orchestrator.store import Store
from tests.orchestrator.test_report import _bench_test, _spec

# What `llama-bench -m tiny-q8_0.gguf -p 64 -n 32 -d 416 -r 3 -o json` prints (fields as recorded
# from a real run; numbers fixed), for two llama.cpp builds: the second decodes 20% slower.
BEFORE = [43.1, 42.8, 43.5, 42.9, 43.3]
AFTER = [34.4, 34.9, 34.1, 34.6, 34.2]


def _bench_file(path: Path, tg: list[float], *, jsonl: bool = False) -> Path:
    spec = _spec("laptop-80w", "tiny:q8_0", 512)
    tests = [_bench_test(spec, "pp", [812.4, 798.0, 805.3, 801.0, 809.9]),
             _bench_test(spec, "tg", tg)]  # fmt: skip
    if jsonl:
        path.write_text("".join(json.dumps(t) + "\n" for t in tests))
    else:
        path.write_text(json.dumps(tests, indent=2))
    return path


def _orch(store: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--store", str(store), *args], catch_exceptions=False)


def test_import_makes_one_job_per_pp_tg_pair(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "orch.db")
    done = import_llama_bench(store, _bench_file(tmp_path / "bench.json", BEFORE), "laptop")

    assert (done.campaign, done.jobs, done.tests, done.new_results) == ("import-bench", 1, 2, 1)
    [job] = store.campaign_jobs("import-bench")
    assert job.result is not None and job.result.engine is not None
    spec = job.spec
    # context = depth + prompt + gen, the inverse of orch's own `-d context - prompt - gen`
    assert (spec.host, spec.engine, spec.backend, spec.context) == (
        "laptop",
        "llama-bench",
        "cpu",
        512,
    )
    assert spec.model == "tiny-q8_0"  # from model_filename
    assert (spec.workload.prompt_tokens, spec.workload.gen_tokens, spec.repetitions) == (64, 32, 5)
    assert job.result.measurement("tg").samples_ts == BEFORE  # type: ignore[union-attr]
    assert job.result.engine.build_commit == "4227c9be"
    assert job.result.engine.details["cpu_info"].startswith("AMD RYZEN AI MAX+ 395")


def test_import_twice_changes_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "orch.db")
    path = _bench_file(tmp_path / "bench.json", BEFORE)
    import_llama_bench(store, path, "laptop")

    again = import_llama_bench(store, path, "laptop")

    assert again.new_results == 0 and len(store.campaign_jobs("import-bench")) == 1


def test_jsonl_imports_like_json(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "orch.db")
    import_llama_bench(store, _bench_file(tmp_path / "a.json", BEFORE), "laptop", campaign="a")
    import_llama_bench(
        store, _bench_file(tmp_path / "b.jsonl", BEFORE, jsonl=True), "laptop", campaign="b"
    )

    def records(campaign: str) -> list[dict[str, Any]]:
        rows = json.loads(render(build_pivot(campaign, store.campaign_jobs(campaign)), "json"))
        return [{k: v for k, v in r.items() if k not in ("campaign", "job_id")} for r in rows]

    assert records("a") == records("b")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"n_prompt": 1,', r"bad\.json:1: not llama-bench JSON or JSONL"),
        ("[]", "no llama-bench tests"),
        ('[{"n_prompt": 64, "n_gen": 0}]', "test 1 lacks samples_ts"),
    ],
)
def test_import_errors_name_the_file_and_what_to_do(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)

    with pytest.raises(ReportError, match=message):
        import_llama_bench(Store.open(tmp_path / "orch.db"), path, "laptop")


def test_import_needs_a_host_unless_orch_wrote_the_file(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="--host NAME"):
        import_llama_bench(
            Store.open(tmp_path / "orch.db"), _bench_file(tmp_path / "x.json", BEFORE), None
        )


def test_export_reimports_to_the_same_report(tmp_path: Path) -> None:
    db = tmp_path / "orch.db"
    assert _orch(db, "import", "llama-bench", str(_bench_file(tmp_path / "b.json", BEFORE)),
                 "--host", "laptop", "--campaign", "first").exit_code == 0  # fmt: skip
    exported = _orch(db, "report", "first", "--format", "llama-bench-json")
    objects: list[dict[str, Any]] = json.loads(exported.output)
    assert [(o["n_prompt"], o["n_gen"], o["n_depth"]) for o in objects] == [
        (64, 0, 416),
        (0, 32, 416),
    ]
    assert objects[1]["samples_ts"] == BEFORE and objects[1]["orch_host"] == "laptop"
    (tmp_path / "export.json").write_text(exported.output)

    # No --host: the file says which box ran it.
    assert _orch(db, "import", "llama-bench", str(tmp_path / "export.json"),
                 "--campaign", "second").exit_code == 0  # fmt: skip

    first = _orch(db, "report", "first", "--format", "md").output
    second = _orch(db, "report", "second", "--format", "md").output
    assert first.replace("### first", "### second") == second


def _two_builds(tmp_path: Path) -> Path:
    db = tmp_path / "orch.db"
    for name, tg in (("before", BEFORE), ("after", AFTER)):
        path = _bench_file(tmp_path / f"{name}.json", tg)
        result = _orch(db, "import", "llama-bench", str(path), "--host", "laptop",
                       "--campaign", name)  # fmt: skip
        assert result.exit_code == 0, result.output
    return db


def test_compare_shows_ratio_and_verdict(tmp_path: Path) -> None:
    done = _orch(_two_builds(tmp_path), "compare", "before", "after", "--format", "md")

    assert done.exit_code == 0
    tg = next(line for line in done.output.splitlines() if "tg tokens/s" in line)
    assert re.search(
        r"\| 43\.1 \([\d.]+–[\d.]+\) n=5 +\| 34\.4 \([\d.]+–[\d.]+\) n=5 · 0\.80× slower", tg
    )


def test_compare_fails_on_a_real_regression_beyond_the_threshold(tmp_path: Path) -> None:
    db = _two_builds(tmp_path)

    guarded = CliRunner().invoke(
        cli, ["--store", str(db), "compare", "before", "after", "--fail-on-regression", "5"]
    )
    tolerant = _orch(db, "compare", "before", "after", "--fail-on-regression", "25")

    assert guarded.exit_code == 1
    assert "1 regression(s) of after against before beyond 5%" in str(guarded.exception)
    assert "tg tokens/s: 0.798× (20.2% worse)" in str(guarded.exception)
    assert tolerant.exit_code == 0


def test_compare_unknown_campaign_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"no campaign 'nope' .*campaigns: before, after"):
        _orch(_two_builds(tmp_path), "compare", "before", "nope")


def test_campaigns_lists_imports(tmp_path: Path) -> None:
    lines = _orch(_two_builds(tmp_path), "campaigns").output.splitlines()

    assert lines[0].split()[:4] == ["campaign", "created", "last", "result"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {"before", "after"}
    assert rows["after"].split()[-7:] == ["1", "1", "1", "0", "0", "0", "done"]


def test_a_sweep_of_settings_a_job_does_not_name_is_refused(tmp_path: Path) -> None:
    # `llama-bench -t 4,8`: same model, backend, depth, prompt and gen; only n_threads varies.
    spec = _spec("laptop-80w", "tiny:q8_0", 512)
    tests = []
    for threads in (4, 8):
        for test in ("pp", "tg"):
            tests.append({**_bench_test(spec, test, BEFORE), "n_threads": threads})
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(tests))
    store = Store.open(tmp_path / "orch.db")

    with pytest.raises(ReportError, match=r"differ in n_threads \(n_threads: 4 and 8\).*jq"):
        import_llama_bench(store, path, "laptop")
    assert store.campaign_jobs("import-sweep") == []  # nothing half-imported

    # Split by the field, each part imports as its own campaign, nothing lost.
    for threads in (4, 8):
        part = tmp_path / f"t{threads}.json"
        part.write_text(json.dumps([t for t in tests if t["n_threads"] == threads]))
        import_llama_bench(store, part, "laptop", campaign=f"t{threads}")
    assert len(store.campaign_jobs("t4")) == len(store.campaign_jobs("t8")) == 1


def test_pg_tests_are_skipped_never_reported_as_tg(tmp_path: Path) -> None:
    spec = _spec("laptop-80w", "tiny:q8_0", 512)
    pg = {**_bench_test(spec, "tg", [20.0, 20.5, 19.8, 20.1, 20.2]), "n_prompt": 64}
    path = _bench_file(tmp_path / "bench.json", BEFORE)
    path.write_text(json.dumps([*json.loads(path.read_text()), pg]))
    store = Store.open(tmp_path / "orch.db")

    done = import_llama_bench(store, path, "laptop")

    assert (done.jobs, done.tests, done.skipped_pg) == (1, 3, 1)
    [job] = store.campaign_jobs("import-bench")
    assert job.result is not None
    assert job.result.measurement("tg").samples_ts == BEFORE  # type: ignore[union-attr]
    cli = _orch(tmp_path / "orch.db", "import", "llama-bench", str(path), "--host", "laptop")
    assert "skipped 1 -pg test(s)" in cli.output

    only_pg = tmp_path / "pg.json"
    only_pg.write_text(json.dumps([pg]))
    with pytest.raises(ReportError, match="only -pg tests"):
        import_llama_bench(store, only_pg, "laptop")


def test_server_campaign_round_trips_its_axes_and_figures_not_estimates(tmp_path: Path) -> None:
    from tests.orchestrator.report_data import CAMPAIGN, fill_store

    store = Store.open(tmp_path / "orch.db")
    fill_store(store)
    exported = render(build_pivot(CAMPAIGN, store.campaign_jobs(CAMPAIGN)), "llama-bench-json")
    objects = json.loads(exported)
    # A server engine measures requests, not llama-bench's windows: no made-up nanoseconds.
    assert {(o["samples_ns"], o["avg_ns"], o["stddev_ns"]) for o in objects} == {(None,) * 3}
    path = tmp_path / "export.json"
    path.write_text(exported)

    import_llama_bench(store, path, None, campaign="again")

    def figures(campaign: str) -> list[dict[str, Any]]:
        rows = json.loads(render(build_pivot(campaign, store.campaign_jobs(campaign)), "json"))
        keep = ("host", "engine", "model", "backend", "context", "vram_split", "workload",
                "tg_tokens_per_s_samples", "pp_tokens_per_s_samples")  # fmt: skip
        return sorted(
            ({k: r[k] for k in keep} for r in rows if r["status"] == "ok"), key=json.dumps
        )

    assert figures("again") == figures(CAMPAIGN)


def test_an_import_labelled_vulkan_whose_rows_ran_on_the_cpu_is_mislabelled(
    tmp_path: Path,
) -> None:
    # The worker's rule (jobs/backends.py) applies to imported files too: llama-bench's own
    # `backends`/`gpu_info` fields say CPU, so `--backend vulkan` cannot make it a Vulkan figure.
    store = Store.open(tmp_path / "orch.db")
    bench = _bench_file(tmp_path / "bench.json", BEFORE)
    import_llama_bench(store, bench, "laptop", campaign="as-vulkan", backend="vulkan")
    [job] = store.campaign_jobs("as-vulkan")
    assert job.result is not None and job.result.status.value == "mislabelled"
    check = job.result.backend_check
    assert check is not None and check.verdict == "mismatch" and check.devices == ["CPU"]
    assert job.result.error is not None and "not run on backend vulkan" in job.result.error
    report = _orch(tmp_path / "orch.db", "report", "as-vulkan", "--metrics", "tg")
    assert "mislabelled" in report.output and "43.1" not in report.output

    import_llama_bench(store, bench, "laptop", campaign="as-cpu", backend="cpu")
    [job] = store.campaign_jobs("as-cpu")
    assert job.result is not None and job.result.status.value == "ok"
    assert job.result.backend_check is not None
    assert job.result.backend_check.verdict == "match"
