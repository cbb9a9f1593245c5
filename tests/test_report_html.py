"""report.html: self-contained, every section present, and - in a real headless Chromium - no
JavaScript error and every figure drawn."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from refusal_lens.report_html import render_report_html

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
N_FIGURES = 3  # refusal rates, candidate scores, logit lens


@pytest.fixture(scope="module")
def run_dir(synthetic, tmp_path_factory):
    from refusal_lens.datasets import default_data
    from refusal_lens.pipeline import run_pipeline

    data = default_data(synthetic, n_train=16, n_val=4, n_test=8)
    data.harmful_categories = ["hacking" if "hack" in x else "other" for x in data.harmful_test]
    out = tmp_path_factory.mktemp("html") / "run"
    run_pipeline(synthetic, out, seeds=(0,), n_train=16, n_val=4, max_new_tokens=6, data=data,
                 n_screen=4, top_k=2, progress=False)
    return out


def _browser() -> str | None:
    env = os.environ.get("BROWSER_PATH")
    if env and os.access(env, os.X_OK):
        return env
    return next((p for n in ("chromium", "chromium-browser", "google-chrome",
                             "google-chrome-stable") if (p := shutil.which(n))), None)


def _dump_dom(html: Path) -> str:
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium/Chrome found (install the Debian package `chromium`, or set "
                    "BROWSER_PATH): the browser check of report.html did not run")
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                              "--virtual-time-budget=10000", "--dump-dom", html.as_uri()],
                             capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_sections_and_self_contained(run_dir):
    text = (run_dir / "report.html").read_text()
    for heading in ("Verdict: SUPPORTED", "Refusal rates", "Refusal by category",
                    "Candidate directions", "Logit lens", "Sample completions (seed 0): harmful",
                    "Sample completions (seed 0): harmless", "Run timing", "random ablation"):
        assert heading in text, heading
    assert not re.search(r"<script[^>]+src=", text)  # nothing loaded from elsewhere
    assert "cdn" not in text.lower().split("<script>")[0]
    assert len(text) > 3_000_000  # plotly.js inlined
    assert text.count('class="plotly-graph-div"') == N_FIGURES
    assert "hacking" in text and (run_dir / "logit_lens.json").is_file()


def test_rerenders_from_files_alone(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "report.html").unlink()
    assert render_report_html(copy).read_text().count('class="plotly-graph-div"') == N_FIGURES
    with pytest.raises(FileNotFoundError, match="report.json"):
        render_report_html(tmp_path / "nothing")


def test_chromium_renders_every_figure_without_js_errors(run_dir):
    dom = _dump_dom(run_dir / "report.html")
    errors = re.search(r'<div id="js-errors"[^>]*>(.*?)</div>', dom, re.S)
    assert errors is not None and errors.group(1).strip() == "", errors and errors.group(1)
    assert dom.count("js-plotly-plot") >= N_FIGURES  # plotly marks each drawn graph div
    assert dom.count('class="main-svg"') >= 2 * N_FIGURES
    assert dom.count('class="hm"') == 3  # drawn heatmaps: candidates, logit lens x 2
    assert dom.count('class="trace bars"') >= 2 and dom.count('class="point"') >= 8
    assert "Verdict: SUPPORTED" in dom


def test_chromium_check_catches_a_broken_page(run_dir, tmp_path):
    """The error box does fill when a script fails (so the check above can fail)."""
    broken = tmp_path / "broken.html"
    broken.write_text((run_dir / "report.html").read_text().replace(
        "</body>", "<script>undefinedFunctionForTheTest();</script></body>"))
    dom = _dump_dom(broken)
    assert "undefinedFunctionForTheTest" in re.search(
        r'<div id="js-errors"[^>]*>(.*?)</div>', dom, re.S).group(1)
