"""Figure files: HTML always; PNG through kaleido + Chromium, or one line naming what is
missing."""

from __future__ import annotations

import math

import pytest

from refusal_lens import figure_files
from refusal_lens.figure_files import save_figure, static_export_problem
from refusal_lens.plots import candidate_scores_figure, suffix_effect_figure


def _candidates():
    return [{"layer": l, "position": p, "screen_bypass": l - p * 1.0, "bypass": math.nan,
             "induce": math.nan, "kl": math.nan, "scored": False}
            for l in range(4) for p in (-2, -1)]


def test_missing_browser_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    problem = static_export_problem()
    if problem and "kaleido is not installed" in problem:
        pytest.skip(problem)
    assert problem and "BROWSER_PATH" in problem and "\n" not in problem
    monkeypatch.setattr(figure_files, "_STATIC_PROBED", False)
    monkeypatch.setattr(figure_files, "_STATIC_PROBLEM", None)
    written = save_figure(suffix_effect_figure({"n_prompts": 4, "refusal_no_suffix": 1.0,
                                                "refusal_adversarial": 0.0,
                                                "refusal_random": [1.0]}), tmp_path / "f")
    assert [p.suffix for p in written] == [".html"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("[refusal_lens] PNG export skipped: kaleido "
                                               "found no Chrome/Chromium")


def test_missing_kaleido_is_named(monkeypatch):
    import importlib.metadata as md

    real = md.version

    def version(name):
        if name == "kaleido":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "version", version)
    assert "kaleido is not installed" in static_export_problem()


def test_png_written_where_a_renderer_exists(tmp_path, monkeypatch):
    problem = static_export_problem()
    if problem:
        pytest.skip(f"PNG export unavailable here: {problem}")
    monkeypatch.setattr(figure_files, "_STATIC_PROBED", False)
    written = save_figure(candidate_scores_figure(_candidates(), None, (3, -1)), tmp_path / "c")
    png = tmp_path / "c.png"
    assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000  # a drawn figure, not an empty canvas
