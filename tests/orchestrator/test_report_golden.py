"""Golden outputs of every report format, on a store filled from fixed results.

The results are `report_data`'s (one Strix Halo box, Vulkan and ROCm, 512M and 32G carve-outs,
telemetry, a skipped, a failed and a waiting job). Each test renders from a real SQLite store
and compares with `golden/NAME`. After an intended change, regenerate them with

    ORCH_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/orchestrator/test_report_golden.py

and review the diff (`git diff tests/orchestrator/golden`) before committing.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.report import PivotOptions, build_pivot, render
from orchestrator.report.campaigns import render_campaigns
from orchestrator.report.compare import compare_within, regressions
from orchestrator.store import Store
from tests.orchestrator.report_data import CAMPAIGN, fill_store

GOLDEN = Path(__file__).parent / "golden"
# Read at import: the autouse clean_environ fixture clears ORCH_* before each test runs.
UPDATE = os.environ.get("ORCH_UPDATE_GOLDEN") == "1"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(tmp_path / "orch.db")
    fill_store(store)
    # A fixed clock for the campaign's dates (the store stamps them when they are written).
    store.conn.execute(
        "UPDATE campaigns SET created_at = '2026-01-15T08:55:00+00:00', "
        "updated_at = '2026-01-15T08:55:00+00:00'"
    )
    yield store
    store.close()


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_bytes(text.encode())  # bytes: CSV's \r\n must survive
    assert path.is_file(), f"{path} missing: run with ORCH_UPDATE_GOLDEN=1 to write it"
    assert text == path.read_bytes().decode(), f"{name} differs from its golden file"


BASELINE = PivotOptions(baseline=("vram_split", "512M"))


# (golden file, format, options): every report format (test_store_layout.py renders them too).
REPORTS = [
    ("report.txt", "table", PivotOptions()),
    ("report-baseline.txt", "table", BASELINE),
    ("report-baseline.md", "md", BASELINE),
    ("report.csv", "csv", PivotOptions()),
    ("report.json", "json", PivotOptions()),
    ("report.llama-bench.json", "llama-bench-json", PivotOptions()),
    (
        "report-by-backend.md",
        "md",
        PivotOptions(
            rows=("metric",),
            columns=("backend", "vram_split"),
            metrics=("tg", "ttft", "vram", "gtt", "gpu_busy", "copy_busy", "j_per_token"),
        ),
    ),
]


@pytest.mark.parametrize(("name", "fmt", "options"), REPORTS)
def test_report_golden(store: Store, name: str, fmt: str, options: PivotOptions) -> None:
    pivot = build_pivot(CAMPAIGN, store.campaign_jobs(CAMPAIGN), options)

    check_golden(name, render(pivot, fmt))


def test_tidy_json_is_one_row_per_job_with_every_axis_and_metric(store: Store) -> None:
    pivot = build_pivot(CAMPAIGN, store.campaign_jobs(CAMPAIGN))
    records = json.loads(render(pivot, "json"))

    assert len(records) == 7
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) == 4
    assert all(r["gpu_busy_pct"] is not None and r["power_w"] is not None for r in ok)
    assert {r["power_source"] for r in ok} == {"APU package power: includes the CPU"}
    skipped = next(r for r in records if r["status"] == "skipped")
    assert skipped["error"] == "predicted OOM (needs 23.1 GB, has 0.5 GB)"
    assert skipped["tg_tokens_per_s_median"] is None and skipped["power_w"] is None


def test_compare_golden(store: Store) -> None:
    pivot = compare_within(store, CAMPAIGN, "vram_split=512M", "vram_split=32G")

    check_golden("compare.txt", render(pivot, "table"))
    assert [str(r) for r in regressions(pivot, 5.0)] == [
        "rocm 8192 tg tokens/s: 0.944× (5.6% worse)"
    ]
    assert regressions(pivot, 10.0) == []


def test_campaigns_golden(store: Store) -> None:
    check_golden("campaigns.txt", render_campaigns(store) + "\n")


def test_html_is_self_contained_with_charts(store: Store) -> None:
    pivot = build_pivot(CAMPAIGN, store.campaign_jobs(CAMPAIGN), BASELINE)
    html = render(pivot, "html")

    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    # Nothing fetched from elsewhere: no scripts, stylesheets or images, and the SVGs' links
    # only point inside the page (`xlink:href="#glyph..."`).
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc\s*=", html)
    assert not re.search(r"""href\s*=\s*["'](?!#)""", html)
    kinds = re.findall(r'<figure class="chart" id="[^"]+" data-kind="(\w+)">', html)
    # tg, pp, TTFT bars; one context has figures, so no context lines; 4 jobs with telemetry.
    assert kinds == ["bar"] * 3 + ["timeline"] * 4
    assert html.count("<svg") == 7
    caption = "tg tokens/s by configuration (median; 95% CI from 6 samples)"
    assert f"<figcaption>{caption}</figcaption>" in html
    assert '<td class="figure">42.9 (42.2–43.4) n=5 · 2.48× faster</td>' in html
    assert "skipped: predicted OOM (needs 23.1 GB, has 0.5 GB)" in html
    assert render(pivot, "html") == html  # deterministic, so it can be diffed


def test_html_draws_tokens_per_s_against_context(store: Store) -> None:
    from tests.orchestrator.test_report import CAMPAIGN as BENCH
    from tests.orchestrator.test_report import _campaign_rows

    html = render(build_pivot(BENCH, _campaign_rows()), "html")

    captions = re.findall(r"<figcaption>([^<]+)</figcaption>", html)
    assert captions == [
        "tg tokens/s by configuration (median; 95% CI from 6 samples)",
        "pp tokens/s by configuration (median; 95% CI from 6 samples)",
        "tg tokens/s vs context length (median; 95% CI from 6 samples)",
        "pp tokens/s vs context length (median; 95% CI from 6 samples)",
    ]
