"""Bootstrap CIs, the fixed decision rule and target bars."""

from __future__ import annotations

import math

import numpy as np

import pytest

from refusal_lens.evaluation import DECISION_RULE, bootstrap_ci, check_targets, decide, rate_summary


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    flags = [True] * 30 + [False] * 70
    lo, hi = bootstrap_ci(flags, seed=3)
    assert lo <= 0.3 <= hi and 0.15 < lo < 0.3 < hi < 0.45
    assert bootstrap_ci(flags, seed=3) == (lo, hi)
    s = rate_summary(flags)
    assert s["rate"] == pytest.approx(0.3) and s["n"] == 100
    assert bootstrap_ci([True] * 10) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))


BASE = dict(baseline_harmful=0.9, ablation=0.05, random_ablation=0.85,
            baseline_harmless=0.02, addition=0.9, random_addition=0.05)


@pytest.mark.parametrize("change, verdict", [
    ({}, "SUPPORTED"),
    ({"baseline_harmful": 0.49}, "NO-BASELINE-REFUSAL"),
    ({"baseline_harmful": 0.49, "ablation": 0.9}, "NO-BASELINE-REFUSAL"),
    ({"ablation": 0.41}, "NOT SUPPORTED"),            # drop vs baseline 0.49 < 0.5
    ({"ablation": 0.40}, "SUPPORTED"),                # exactly 0.5 passes
    ({"random_ablation": 0.25}, "NOT SUPPORTED"),     # random also removes refusal
    ({"addition": 0.5}, "NOT SUPPORTED"),             # rise vs baseline 0.48 < 0.5
    ({"random_addition": 0.7}, "NOT SUPPORTED"),      # random also induces refusal
])
def test_decision_rule(change, verdict):
    assert decide(BASE | change)["verdict"] == verdict


def test_decision_rule_is_fixed():
    assert DECISION_RULE == {"min_drop_vs_baseline": 0.5, "min_drop_vs_random": 0.25,
                             "min_baseline_refusal": 0.5}


def test_targets():
    rates = {k: {"rate": v} for k, v in BASE.items()}
    cap = {"baseline": {"ce": 2.0}, "orthogonalized": {"ce": 2.2}}
    t = check_targets(rates, cap)
    assert t["ablation"]["met"] and t["random_ablation"]["met"] and t["addition"]["met"]
    assert not t["orthogonalized_ce"]["met"]
    assert t["orthogonalized_ce"]["value"] == pytest.approx(0.1)


def test_baseline_ce_scores_the_reference_answers(synthetic):
    from refusal_lens.evaluation import evaluate_baseline
    from refusal_lens.scoring import completion_cross_entropy

    syn = synthetic.info["synthetic"]
    harmful, harmless = syn.harmful[:2], syn.harmless[:2]
    answers = ["Sure here is your answer", "Here is a list"]
    base = evaluate_baseline(synthetic, harmful, harmless, max_new_tokens=4, progress=False,
                             harmless_reference=answers, ce_tokens=3)
    want = completion_cross_entropy(synthetic, harmless, answers, max_completion_tokens=3)
    assert base.ce == pytest.approx(want["ce"]) and base.ce_text == answers
    assert "reference" in base.ce_source
    own = evaluate_baseline(synthetic, harmful, harmless, max_new_tokens=4, progress=False)
    assert own.ce_text == own.harmless.completions and own.ce_source == "baseline completions"
    with pytest.raises(ValueError, match="one per prompt"):
        evaluate_baseline(synthetic, harmful, harmless, max_new_tokens=4, progress=False,
                          harmless_reference=answers[:1])


def test_addition_sweep_finds_the_planted_layer(synthetic, planted):
    """Adding the planted direction makes harmless prompts refuse; a random one does not."""
    from refusal_lens.evaluation import addition_sweep
    from refusal_lens.plots import addition_sweep_figure

    syn, d = planted
    harmless = syn.harmless[:24]
    rows = addition_sweep(synthetic, {d.layer: syn.direction * 4}, harmless, max_new_tokens=6,
                          progress=False)
    (row,) = rows
    assert row["layer"] == d.layer and row["norm"] == pytest.approx(4 * float(
        syn.direction.norm()), rel=1e-5)
    assert row["addition"]["rate"] >= 0.8 > 0.2 >= row["random_addition"]["rate"]
    assert row["addition"]["n"] == len(harmless)
    fig = addition_sweep_figure(rows, chosen=d.layer, baseline=0.0)
    assert len(fig.data) == 2
    with pytest.raises(ValueError, match="at least one"):
        addition_sweep(synthetic, {}, harmless, progress=False)


# ---- pooled intervals: a cluster bootstrap over prompts ----------------------------------


def test_cluster_bootstrap_is_wider_on_correlated_seeds_and_equal_for_one_seed():
    from refusal_lens.evaluation import bootstrap_ci, cluster_bootstrap_ci

    rng = np.random.default_rng(1)
    flags = (rng.random(60) < 0.5).tolist()
    # two seeds that agree on every prompt: 120 flags but only 60 independent prompts
    naive = bootstrap_ci(flags + flags)
    cluster = cluster_bootstrap_ci([flags, flags])
    assert cluster[1] - cluster[0] > 1.25 * (naive[1] - naive[0])
    assert cluster == bootstrap_ci(flags)  # identical seeds: the same as one seed's interval
    assert cluster_bootstrap_ci([flags]) == bootstrap_ci(flags)  # one seed: exactly the naive


def test_pooled_rates_use_the_cluster_bootstrap():
    from refusal_lens.evaluation import Arm, _pooled, cluster_bootstrap_ci

    prompts = [f"p{i}" for i in range(30)]
    a = Arm("ablation", "harmful", prompts, [""] * 30, [i % 3 == 0 for i in range(30)])
    b = Arm("ablation", "harmful", prompts, [""] * 30, [i % 2 == 0 for i in range(30)])
    out = _pooled([a, b], 0)
    assert (out["ci_low"], out["ci_high"]) == cluster_bootstrap_ci([a.flags, b.flags])
    assert (out["n"], out["n_prompts"], out["n_seeds"]) == (60, 30, 2)
    c = Arm("ablation", "harmful", prompts[::-1], [""] * 30, a.flags)
    with pytest.raises(ValueError, match="different prompts"):
        _pooled([a, c], 0)
