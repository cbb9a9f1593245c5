"""Direction selection on the synthetic model with a planted refusal direction."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.activations import ActivationError
from refusal_lens.selection import SelectionConfig, SelectionError, select_direction


@pytest.fixture(scope="module")
def data(synthetic):
    syn = synthetic.info["synthetic"]
    return dict(harmful_train=syn.harmful[:32], harmless_train=syn.harmless[:32],
                harmful_val=syn.harmful[32:48], harmless_val=syn.harmless[32:48],
                refusal_ids=synthetic.tokenizer.convert_tokens_to_ids(["I"]))


@pytest.fixture(scope="module")
def strict(synthetic, data):
    return select_direction(synthetic, **data, config=SelectionConfig(top_k=4), progress=False)


def test_selects_the_planted_direction(synthetic, strict):
    planted = synthetic.info["synthetic"].direction.double()
    cos = torch.nn.functional.cosine_similarity(strict.direction.vector, planted, dim=0)
    assert cos > 0.9
    assert not strict.fallback and strict.rule.startswith("strict")
    c = strict.chosen
    assert c.bypass < 0 < c.induce and c.kl <= 0.1 and not c.discarded
    assert strict.direction.layer > synthetic.info["synthetic"].plant_layer


def test_score_table_is_complete(synthetic, strict):
    n = len(synthetic.post_instruction_positions) * 4  # layers < ceil(0.8 * 4)
    assert len(strict.scores) == n
    assert sum(s.scored for s in strict.scores) <= 4
    csv = strict.to_csv().splitlines()
    assert len(csv) == n + 1 and csv[0].startswith("layer,position")
    assert strict.to_json()["chosen"]["layer"] == strict.direction.layer


def test_all_discarded_falls_back_without_crashing(synthetic, data):
    cfg = SelectionConfig(top_k=4, kl_threshold=-1.0, random_kl_factor=0.0)
    res = select_direction(synthetic, **data, config=cfg, progress=False)
    assert res.fallback
    assert res.rule.startswith("no KL filter")
    assert all(s.discarded for s in res.scores)  # every candidate fails the strict rule
    assert any("fallback" in n for n in res.notes)


def test_relaxed_kl_rule_is_relative_to_random_direction(synthetic, data):
    cfg = SelectionConfig(top_k=4, kl_threshold=0.0, random_kl_factor=1e6)
    res = select_direction(synthetic, **data, config=cfg, progress=False)
    assert res.fallback and res.rule.startswith("relaxed KL")
    assert res.kl_threshold_used == pytest.approx(1e6 * res.kl_random)


def test_bad_inputs(synthetic, data):
    with pytest.raises(SelectionError, match="harmful"):
        select_direction(synthetic, **(data | {"harmful_train": []}), progress=False)
    with pytest.raises(SelectionError, match="Validation"):
        select_direction(synthetic, **(data | {"harmless_val": []}), progress=False)

    def nan_hook(x, hook=None):
        return x * float("nan")

    with synthetic.bridge.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", nan_hook)]):
        with pytest.raises(ActivationError):
            select_direction(synthetic, **data, progress=False)


def test_grouped_scoring_equals_one_candidate_at_a_time(synthetic, data, strict):
    """Scoring candidates 8 per pass (the default) gives the scores of one per pass."""
    one = select_direction(synthetic, **data, config=SelectionConfig(top_k=4, group=1),
                           progress=False)
    assert (one.direction.layer, one.direction.position) == (strict.direction.layer,
                                                            strict.direction.position)
    for a, b in zip(one.scores, strict.scores):
        for key in ("screen_bypass", "bypass", "induce", "kl"):
            x, y = getattr(a, key), getattr(b, key)
            assert (x != x and y != y) or abs(x - y) < 1e-4, (key, x, y)
    assert abs(one.kl_random - strict.kl_random) < 1e-5
    with pytest.raises(SelectionError, match="group"):
        select_direction(synthetic, **data, config=SelectionConfig(group=0), progress=False)


def _cand(layer, bypass, induce, kl=0.0):
    from refusal_lens.selection import CandidateScore

    return CandidateScore(layer, -1, 1.0, bypass=bypass, induce=induce, kl=kl, scored=True)


def test_joint_pick_maximises_the_worse_rank():
    from refusal_lens.selection import joint_pick

    a = _cand(1, bypass=-5.0, induce=0.5)  # best bypass, worst induce: worse rank 3
    b = _cand(2, bypass=-4.0, induce=2.0)  # ranks 2 and 2: worse rank 2
    c = _cand(3, bypass=-1.0, induce=3.0)  # best induce, worst bypass: worse rank 3
    assert joint_pick([a, b, c]) is b
    assert min([a, b, c], key=lambda s: s.bypass) is a  # what the paper's rule takes
    d = _cand(4, bypass=-4.5, induce=2.0)  # now d ties b on induce and beats it on bypass
    assert joint_pick([a, b, c, d]) is d
    assert joint_pick([c]) is c
    with pytest.raises(SelectionError):
        joint_pick([])


def test_joint_rule_keeps_the_fallback_chain(synthetic):
    """Both rules pick within the first filter tier that has candidates: a candidate failing
    the KL filter is never taken by 'joint' while another passes it."""
    from refusal_lens.selection import choose

    cfg = SelectionConfig(kl_threshold=0.1)
    good = _cand(1, bypass=-1.0, induce=0.5, kl=0.05)
    loud = _cand(2, bypass=-9.0, induce=9.0, kl=5.0)  # best at both, fails KL
    for rule in ("paper", "joint"):
        chosen, text, fallback, _ = choose([good, loud], cfg, 3, 0.01, [], rule, record=False)
        assert chosen is good and not fallback, rule
    chosen, text, fallback, _ = choose([loud], cfg, 3, 0.01, [], "joint", record=False)
    assert chosen is loud and fallback and "worse-of-two" in text


def test_rules_on_the_same_scores(synthetic, data, strict):
    from refusal_lens.selection import joint_pick

    assert SelectionConfig().rule == "joint"
    with pytest.raises(SelectionError, match="joint"):
        SelectionConfig(rule="best")
    assert set(strict.by_rule) == {"paper", "joint"}
    joint = strict.by_rule["joint"]
    assert (joint["layer"], joint["position"]) == (strict.direction.layer,
                                                   strict.direction.position)
    assert strict.direction.meta["selection_rule"] == "joint"
    paper = select_direction(synthetic, **data, config=SelectionConfig(top_k=4, rule="paper"),
                             progress=False)
    # the same scores, the other rule recorded; direction_for rebuilds it without rescoring
    assert paper.by_rule == strict.by_rule
    for a, b in zip(paper.scores, strict.scores):
        assert (a.bypass, a.induce, a.kl) == (b.bypass, b.induce, b.kl) or a.bypass != a.bypass
    d = strict.direction_for("paper")
    assert (d.layer, d.position) == (paper.direction.layer, paper.direction.position)
    assert torch.equal(d.vector, paper.direction.vector)
    passing = [s for s in strict.scores if s.scored and not s.discarded]
    assert strict.chosen is joint_pick(passing)
    assert paper.chosen.layer == min(passing, key=lambda s: s.bypass).layer
    planted = synthetic.info["synthetic"].direction.double()
    assert torch.nn.functional.cosine_similarity(d.vector, planted, dim=0) > 0.9
    with pytest.raises(SelectionError, match="recorded"):
        strict.direction_for("other")


def test_induce_bar_is_the_papers_zero_or_the_models_own_harmful_level(strict):
    """bar = min(0, harmful val mean metric): 0 where the model's harmful prompts sit above 0,
    their own level where they sit below it (a candidate at -0.5 then passes a bar of -0.75)."""
    from refusal_lens.selection import choose, induce_bar

    assert induce_bar(2.5) == 0.0 and induce_bar(0.0) == 0.0
    assert induce_bar(-0.75) == -0.75
    with pytest.raises(SelectionError, match="metric"):
        induce_bar(float("nan"))
    cfg = SelectionConfig(kl_threshold=0.1)
    weak = _cand(1, bypass=-2.0, induce=-0.5, kl=0.05)
    for bar, fallback in ((0.0, True), (-0.75, False)):
        chosen, text, fb, _ = choose([weak], cfg, 3, 0.01, [], "paper", record=False, bar=bar)
        assert chosen is weak and fb is fallback, bar
    assert "induce > -0.75" in choose([weak], cfg, 3, 0.01, [], "paper", record=False,
                                       bar=-0.75)[1]
    assert strict.induce_bar == induce_bar(strict.baseline["harmful_val_metric"])
    assert strict.to_json()["induce_bar"] == strict.induce_bar


def test_addition_layer_chosen_on_validation(synthetic, data, strict):
    with pytest.raises(SelectionError, match="addition_layer"):
        SelectionConfig(addition_layer="test")
    res = select_direction(synthetic, **data,
                           config=SelectionConfig(top_k=4, addition_layer="best"),
                           progress=False)
    meta = res.direction.meta
    tried = {int(k): v for k, v in meta["addition_induce"].items()}
    assert set(tried) == {s.layer for s in res.scores if s.scored}
    assert tried[res.direction.layer] == res.chosen.induce  # the read layer's own score
    assert meta["addition_layer"] == max(tried, key=tried.get)
    assert (res.direction.layer, res.direction.position) == (strict.direction.layer,
                                                            strict.direction.position)
    assert "addition_layer" not in strict.direction.meta  # default: add where it was read


def test_choose_from_a_recorded_table(synthetic, strict):
    import json

    from refusal_lens.selection import choose_from_table, dumps

    table = json.loads(dumps(strict.to_json()))["candidates"]  # strict JSON: NaN -> null
    for rule in ("paper", "joint"):
        pick = choose_from_table(table, strict.kl_random, synthetic.n_layers, rule)
        want = strict.by_rule[rule]
        assert (pick["layer"], pick["position"], pick["rule"]) == (
            want["layer"], want["position"], want["rule"])
    with pytest.raises(SelectionError, match="scored"):
        choose_from_table([], 0.1, synthetic.n_layers, "paper")
    with pytest.raises(SelectionError, match="rule"):
        choose_from_table(table, 0.1, synthetic.n_layers, "best")


def _per_prompt_fit(model, harmful, harmless, ids, layers, positions, batch_size=32,
                    min_kept=4):
    """The fit as selection computed it before it used mean_diff_candidates: per-prompt float32
    activations and refusal metric (bridge hooks), filtered, averaged in float64."""
    from refusal_lens.batching import iter_batches
    from refusal_lens.scoring import refusal_metric

    def side(prompts):
        acts, metrics, cur = [], [], {}

        def grab(i):
            def fn(x, hook=None):
                cur[i] = x[:, positions].float().cpu()
                return x
            return fn

        hooks = [(f"blocks.{l}.hook_resid_pre", grab(i)) for i, l in enumerate(layers)]
        for batch in iter_batches(model, prompts, batch_size, sort_by_length=True,
                                  max_tokens=64 * batch_size):
            metrics.append(refusal_metric(model.logits(batch, hooks)[:, -1].float(), ids))
            acts.append(torch.stack([cur[i] for i in range(len(layers))], 1))
        return torch.cat(acts), torch.cat(metrics)

    (a_h, m_h), (a_s, m_s) = side(harmful), side(harmless)
    keep_h, keep_s = m_h > 0, m_s < 0
    if int(keep_h.sum()) < min_kept:
        keep_h[:] = True
    if int(keep_s.sum()) < min_kept:
        keep_s[:] = True
    return a_h[keep_h].double().mean(0) - a_s[keep_s].double().mean(0)


def test_fit_with_mean_diff_candidates_equals_the_per_prompt_fit(synthetic, data, strict,
                                                                 monkeypatch):
    """Selection's filtered difference in means (mean_diff_candidates, float64 streaming sums)
    equals the per-prompt fit it replaced, and selection chooses the same candidate from it."""
    import math

    import refusal_lens.selection as selection

    layers = list(range(math.ceil(0.8 * synthetic.n_layers)))  # the layers selection fits
    positions = synthetic.post_instruction_positions
    new, info = selection.filter_and_fit(synthetic, data["harmful_train"],
                                         data["harmless_train"], data["refusal_ids"], layers,
                                         positions, progress=False)
    old = _per_prompt_fit(synthetic, data["harmful_train"], data["harmless_train"],
                          data["refusal_ids"], layers, positions)
    assert new.dtype == torch.float64 and new.shape == old.shape
    live = old.norm(dim=-1) > 1e-6 * old.norm(dim=-1).max()
    cos = torch.nn.functional.cosine_similarity(new, old, dim=-1)[live]
    assert float(cos.min()) > 0.99999
    assert torch.allclose(new, old, rtol=0, atol=1e-5 * float(old.abs().max()))
    assert info["harmful_kept"] >= 4 and info["harmless_kept"] >= 4
    assert not info["harmful_unfiltered"] and not info["harmless_unfiltered"]

    monkeypatch.setattr(selection, "filter_and_fit", lambda *a, **k: (old, info))
    again = select_direction(synthetic, **data, config=SelectionConfig(top_k=4), progress=False)
    assert (again.direction.layer, again.direction.position) == (strict.direction.layer,
                                                                strict.direction.position)
