"""Figures: candidate scores, refusal rates, the suffix effect and the optimised-ablation front."""

from __future__ import annotations

import math

import pytest

from refusal_lens.plots import candidate_scores_figure, suffix_effect_figure


def _candidates():
    rows = []
    for layer in range(6):
        for pos in (-3, -2, -1):
            rows.append({"layer": layer, "position": pos, "screen_bypass": layer - 3.0 + pos,
                         "bypass": math.nan, "induce": math.nan, "kl": math.nan,
                         "scored": False})
    for r in rows[-3:]:  # layer 5 is fully scored
        r.update(bypass=-1.0 + r["position"], induce=0.5, kl=0.01, scored=True)
    return rows


def test_candidate_scores_labels_colour_bar_and_no_empty_panels():
    fig = candidate_scores_figure(_candidates(), ["<end>", "\n", "<asst>"], (5, -1))
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 1 and list(heat[0].x) == ["-3 '<end>'", "-2 '\\n'", "-1 '<asst>'"]
    assert heat[0].colorbar.title.text  # the colour bar says what it shows
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 3
    for b in bars:  # every bar panel is full: one non-null bar per scored candidate
        assert len(b.x) == 3 and all(v is not None for v in b.x)
        assert all(y.startswith("L5 ") for y in b.y)
    assert fig.layout.width is None  # responsive: fills the page, not a fixed 1400 px
    assert {t.name for t in fig.data if t.type == "scatter"} == {"chosen", "fully scored"}


def test_candidate_scores_without_scored_rows_has_one_panel():
    rows = [r | {"scored": False} for r in _candidates()]
    fig = candidate_scores_figure(rows, None, None)
    assert [t.type for t in fig.data] == ["heatmap"]
    assert list(fig.data[0].x) == ["-3", "-2", "-1"]


def test_suffix_effect_intervals_and_distinct_controls():
    effect = {"n_prompts": 100, "refusal_no_suffix": 0.93, "refusal_adversarial": 0.03,
              "refusal_random": [0.94, 0.91, 0.9], "random_seeds": [1000, 1001, 1002]}
    fig = suffix_effect_figure(effect)
    names = [t.name for t in fig.data]
    assert names == ["no suffix", "adversarial suffix", "random suffixes (controls)"]
    for t in fig.data:
        for y, up, down in zip(t.y, t.error_y.array, t.error_y.arrayminus):
            assert up >= 0 and down >= 0 and up + down > 0  # a real interval around each rate
    controls = fig.data[2]
    assert len(controls.x) == 3 and controls.marker.pattern.shape == "/"
    assert controls.marker.color not in {t.marker.color for t in fig.data[:2]}
    assert fig.data[0].marker.pattern.shape in ("", None)


def test_refusal_rates_controls_grey_and_labels_above_the_intervals():
    from refusal_lens.plots import refusal_rates_figure

    r = lambda x, lo, hi: {"rate": x, "ci_low": lo, "ci_high": hi, "n": 100}  # noqa: E731
    fig = refusal_rates_figure({"baseline_harmful": r(0.9, 0.8, 0.95),
                                "ablation": r(0.04, 0.01, 0.07),
                                "random_ablation": r(0.94, 0.9, 0.97)})
    bars = {t.name: t for t in fig.data if t.type == "bar"}
    assert set(bars) == {"baseline", "ablation", "random ablation"}
    assert bars["random ablation"].marker.pattern.shape == "/"
    assert bars["random ablation"].marker.color not in (bars["ablation"].marker.color,
                                                        bars["baseline"].marker.color)
    labels = [t for t in fig.data if t.type == "scatter"]
    tops = {t.text[0]: t.y[0] for t in labels}
    assert tops == {"0.90": pytest.approx(0.95), "0.04": pytest.approx(0.07),
                    "0.94": pytest.approx(0.97)}


def test_pareto_figure_titles_each_seed_with_its_own_trial_count():
    from refusal_lens.plots_beyond import pareto_figure

    def search(seed, n):
        trials = [{"number": i, "refusal": 1.0 - i / n, "kl": 0.01 * (i + 1)} for i in range(n)]
        return {"seed": seed, "trials": trials, "pareto": list(range(n)), "uniform": trials[-1],
                "chosen": trials[-1], "n_trials": n, "random": {"refusal": 0.9, "kl": 0.005}}

    fig = pareto_figure([search(0, 5), search(1, 3)])
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:2] == ["seed 0: 5 trials", "seed 1: 3 trials"]
