"""The report's real consumers: Chromium renders the HTML report, and a real `llama-bench -o
json`/`-o jsonl` run is imported, reported, exported and imported again."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from jobs.result import Status
from jobs.spec import JobSpec
from orchestrator.store import Store
from tests.integration.conftest import orch
from tests.orchestrator.report_data import CAMPAIGN, fill_store
from tests.orchestrator.test_report import _result, _spec

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        f"no headless browser ({', '.join(BROWSERS)}) on PATH: install Debian's `chromium` "
        "(scripts/test does so when run as root)"
    )


def _browser(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={cwd / 'profile'}", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip


def test_html_report_renders_with_charts_in_chromium(tmp_path: Path) -> None:
    db = tmp_path / "orch.db"
    fill_store(Store.open(db))
    page = tmp_path / "report.html"
    done = orch("--store", str(db), "report", CAMPAIGN, "--format", "html",
                "--baseline", "vram_split=512M", "--out", str(page))  # fmt: skip
    assert done.returncode == 0, done.stderr

    shot = tmp_path / "report.png"
    taken = _browser("--window-size=1280,2400", f"--screenshot={shot}", page.as_uri(), cwd=tmp_path)
    assert shot.is_file(), taken.stderr[-2000:]
    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1280)
    # Not a blank page: many distinct colours (text, bars in two colours, whiskers).
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50
    assert shot.stat().st_size > 50_000

    dom = _browser("--dump-dom", page.as_uri(), cwd=tmp_path).stdout
    figures = re.findall(
        r'<figure class="chart" id="[^"]+" data-kind="(\w+)"><figcaption>([^<]+)</figcaption>',
        dom,
    )
    assert [kind for kind, _ in figures] == ["bar"] * 3 + ["timeline"] * 4
    assert figures[0][1] == "tg tokens/s by configuration (median; 95% CI from 6 samples)"
    assert all(caption.startswith("telemetry: halo ") for _, caption in figures[3:])
    assert dom.count("<svg") == 7  # every chart's SVG was parsed into the document
    assert "2.48× faster" in dom


def _llama_bench(llama_bin: Path, model: Path, out: Path, fmt: str) -> Path:
    done = subprocess.run(
        [str(llama_bin / "llama-bench"), "-m", str(model), "-p", "16", "-n", "8", "-r", "3",
         "-t", "1", "-o", fmt],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out.write_text(done.stdout)
    return out


def _csv_rows(store: Path, campaign: str) -> list[str]:
    done = orch("--store", str(store), "report", campaign, "--format", "csv")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def test_real_llama_bench_json_round_trips_into_a_report(
    tmp_path: Path, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    db = tmp_path / "orch.db"
    bench = _llama_bench(llama_bin, tiny_models["tiny:q8_0"], tmp_path / "bench.json", "json")
    tests = json.loads(bench.read_text())
    assert [(t["n_prompt"], t["n_gen"]) for t in tests] == [(16, 0), (0, 8)]

    done = orch("--store", str(db), "import", "llama-bench", str(bench), "--host", "this-box")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "import-bench"

    report = orch("--store", str(db), "report", "import-bench")
    assert report.returncode == 0, report.stderr
    for metric in ("tg tokens/s", "pp tokens/s"):
        line = next(x for x in report.stdout.splitlines() if metric in x)
        # a noisy shared machine may flag the cell unstable (⚠): that is the report being honest
        assert re.search(rf"{metric}\s+[\d.]+ \([\d.]+–[\d.]+\) n=3( ⚠)?$", line), line
    assert "engine llama-bench, model tiny-q8_0, backend cpu, context 24" in report.stdout

    # Export in llama-bench's own fields, import again (the file names its host), same figures.
    export = tmp_path / "export.json"
    done = orch("--store", str(db), "report", "import-bench", "--format", "llama-bench-json",
                "--out", str(export))  # fmt: skip
    assert done.returncode == 0, done.stderr
    exported = json.loads(export.read_text())
    for ours, theirs in zip(exported, tests, strict=True):
        for key in ("n_prompt", "n_gen", "n_depth", "samples_ts", "samples_ns", "build_commit",
                    "model_filename", "n_threads", "backends"):  # fmt: skip
            assert ours[key] == theirs[key], key
    done = orch("--store", str(db), "import", "llama-bench", str(export), "--campaign", "again")
    assert done.returncode == 0, done.stderr

    first, again = _csv_rows(db, "import-bench"), _csv_rows(db, "again")
    strip = re.compile(r"^[^,]+,[^,]+,")  # campaign and job id differ, nothing else
    assert [strip.sub("", r) for r in first] == [strip.sub("", r) for r in again]
    same = orch("--store", str(db), "compare", "import-bench", "again",
                "--fail-on-regression", "1")  # fmt: skip
    assert same.returncode == 0, same.stdout + same.stderr
    assert "1.00× ≈" in same.stdout


def test_real_llama_bench_jsonl_imports(
    tmp_path: Path, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    db = tmp_path / "orch.db"
    bench = _llama_bench(llama_bin, tiny_models["tiny:q4_k_m"], tmp_path / "run.jsonl", "jsonl")
    assert len(bench.read_text().strip().splitlines()) == 2

    done = orch("--store", str(db), "import", "llama-bench", str(bench), "--host", "box")
    assert done.returncode == 0, done.stderr

    [header, row] = _csv_rows(db, "import-run")
    assert ",box,llama-bench,tiny-q4_k_m,cpu,24," in row and ",ok," in row


def _in_campaign(spec: JobSpec, campaign: str, **update: object) -> JobSpec:
    data = {**spec.model_dump(exclude={"job_id"}), "campaign": campaign, **update}
    return JobSpec.model_validate(data)


@pytest.mark.parametrize(
    ("b_outcomes", "exit_code", "said"),
    [
        (["ok"], 0, "no regression"),
        (["load_failed"], 1, "tg tokens/s: load failed"),
        (["ok", "timeout"], 1, "tg tokens/s: timeout (beside 1 ok job(s))"),
        (["waiting"], 1, "tg tokens/s: waiting: no result in B"),
        ([], 1, "tg tokens/s: no job in B"),
    ],
)
def test_fail_on_regression_exit_code_counts_b_that_did_not_run(
    tmp_path: Path, b_outcomes: list[str], exit_code: int, said: str
) -> None:
    """The real `orch` binary: a guard must not pass because B failed or has not run yet."""
    db = tmp_path / "orch.db"
    store = Store.open(db)
    base = _spec("laptop-80w", "tiny:q8_0", 512)
    other = _spec("laptop-80w", "tiny:q8_0", 2048)  # B runs it, so the two have one in common
    for campaign, outcomes in (("before", ["ok"]), ("after", b_outcomes)):
        store.record_campaign(campaign, "m.yaml", "")
        jobs = [(_in_campaign(other, campaign), "ok")]
        # Jobs of one configuration that differ only in what is not an axis share a cell.
        jobs += [(_in_campaign(base, campaign, timeout_s=600 + i), o)
                 for i, o in enumerate(outcomes)]  # fmt: skip
        for spec, outcome in jobs:
            store.record_job(spec)
            if outcome != "waiting":
                error = None if outcome == "ok" else f"{outcome} on purpose"
                store.upsert_result(_result(spec, Status(outcome), error=error))
    store.close()

    done = orch("--store", str(db), "compare", "before", "after", "--metrics", "tg",
                "--fail-on-regression", "5")  # fmt: skip

    assert done.returncode == exit_code, done.stdout + done.stderr
    assert said in done.stderr
