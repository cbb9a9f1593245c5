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
