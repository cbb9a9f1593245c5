"""Progress bars named by stage, the overall bar of a run, and the closing summary."""

from __future__ import annotations

import json

import pytest
from tqdm.std import tqdm as text_tqdm

from refusal_lens import console
from refusal_lens.console import plan, progress_bar, run_summary, stage, step, tracked


class Recorder(text_tqdm):
    """A text bar that remembers every bar made (description, total, final count)."""

    made: list["Recorder"] = []

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = False
        super().__init__(*args, **kwargs)
        Recorder.made.append(self)


@pytest.fixture
def bars(monkeypatch):
    Recorder.made = []
    monkeypatch.setattr(console, "_bar_class", lambda: Recorder)
    return Recorder.made


def test_bar_is_named_by_nested_stages(bars):
    with stage("seed 0"), stage("ablation · harmful"):
        assert console.label() == "seed 0 · ablation · harmful"
        list(progress_bar(range(3), desc="generating 3 prompts"))
    list(progress_bar(range(2), desc="outside"))
    assert [b.desc for b in bars] == ["seed 0 · ablation · harmful · generating 3 prompts",
                                      "outside"]
    assert console.label() == ""


def test_overall_bar_counts_weighted_steps_and_closes(bars):
    @tracked
    def job(fail: bool = False):
        plan(4, "job")
        with step("a"):
            pass
        with step("b", weight=2):
            if fail:
                raise RuntimeError("boom")
        with step("c"):
            pass
        console.note("writing files")
        postfix.append(console._runs.get().bar.postfix)

    postfix: list[str] = []
    job()
    assert postfix == ["writing files"]
    overall = bars[0]
    assert overall.desc == "job" and overall.total == 4 and overall.n == 4 and overall.disable
    with pytest.raises(RuntimeError):
        job(fail=True)
    assert bars[1].n == 1 and bars[1].disable  # a failed step does not count; the bar is closed
    with step("no run"):  # outside a tracked call steps only label
        pass
    assert len(bars) == 2


def test_plan_disabled_or_untracked_opens_nothing(bars):
    tracked(lambda: plan(3, "off", enabled=False))()
    plan(3, "untracked")
    assert bars == []


def test_widgets_only_in_a_notebook_with_ipywidgets(monkeypatch):
    import importlib.util

    from tqdm.notebook import tqdm as widget_tqdm

    monkeypatch.setattr(console, "_in_notebook", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert console._bar_class() is text_tqdm  # no "IProgress not found" fallback warning
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert console._bar_class() is widget_tqdm
    monkeypatch.setattr(console, "_in_notebook", lambda: False)
    assert console._bar_class() is text_tqdm


def test_run_summary(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    import os
    import time

    os.utime(tmp_path / "old.txt", (time.time() - 3600, time.time() - 3600))
    since = time.time()
    (tmp_path / "report.md").write_text("# r\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.json").write_text("{}")
    report = {"verdict": "SUPPORTED", "timing": {"total_s": 90.0},
              "rates": {"baseline_harmful": {"rate": 0.9, "ci_low": 0.8, "ci_high": 0.95, "n": 20},
                        "ablation": {"rate": float("nan"), "ci_low": None, "ci_high": None,
                                     "n": 0}},
              "directions": {"0": {"layer": 5, "position": -1}}}
    text = run_summary(report, tmp_path, since=since)
    assert f"Wrote 2 file(s) to {tmp_path}/" in text
    assert "report.md" in text and "sub/a.json" in text and "old.txt" not in text
    assert "baseline_harmful  0.90   [0.80, 0.95]  20" in text
    assert "ablation          n/a   [n/a, n/a]  0" in text
    assert "seed 0 layer 5 position -1" in text
    assert text.endswith("Verdict: SUPPORTED  (run time 1.5 min)\n"
                         f"Report: {tmp_path / 'report.md'}")
    assert "old.txt" in run_summary(report, tmp_path)


def test_pipeline_steps_add_up(bars, synthetic, tmp_path):
    """The overall bar of a run ends exactly at its planned total, and the bars inside it name
    the seed and the arm."""
    from refusal_lens.pipeline import FAST, run_pipeline

    kw = {**FAST, "max_new_tokens": 4, "seeds": (0, 1)}
    report = run_pipeline(synthetic, tmp_path / "run", **kw)
    overall = bars[0]
    assert overall.desc.startswith("refusal-lens run") and overall.n == overall.total
    names = {b.desc for b in bars[1:]}
    for want in ("refusal tokens · generating", "baseline · harmful · generating",
                 "seed 1 · selection · screening",
                 "seed 1 · random_ablation · harmful · generating",
                 "seed 0 · orthogonalized · capability · cross-entropy",
                 "seed 0 · addition · harmless · generating"):
        assert any(n.startswith(want) for n in names), (want, sorted(names))
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["verdict"] == report["verdict"]
