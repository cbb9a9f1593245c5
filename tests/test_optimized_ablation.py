"""Optimised (kernel-weighted) ablation: weighted orthogonalization equals weighted hook
ablation, uniform weights equal the paper's orthogonalization, and the search runs and records
a Pareto front (synthetic model)."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.directions import random_like
from refusal_lens.optimized_ablation import (
    Kernel,
    LayerWeights,
    WeightedModel,
    choose_point,
    search_weights,
    weighted_hooks,
    weighted_orthogonalize,
)
from refusal_lens.orthogonalize import orthogonalize
from refusal_lens.execution import last_logits


@pytest.fixture(scope="module")
def batch(synthetic):
    syn = synthetic.info["synthetic"]
    return synthetic.encode_instructions(syn.harmful[:4] + syn.harmless[:4])


def test_kernel_weights():
    k = Kernel(peak=2, width=2, w_max=1.2, w_min=0.2)
    assert k.weights(6) == pytest.approx([0.2, 0.7, 1.2, 0.7, 0.2, 0.0])
    assert Kernel(peak=1, width=0, w_max=1.0, w_min=0.0).weights(3) == [0.0, 1.0, 0.0]
    for bad in (dict(width=-1), dict(w_max=2.0), dict(w_min=float("nan"))):
        with pytest.raises(ValueError):
            Kernel(**(dict(peak=0, width=1, w_max=1.0, w_min=0.5) | bad))
    with pytest.raises(ValueError, match="Need 4"):
        LayerWeights.uniform(3).check(4)


def test_weighted_orthogonalization_equals_weighted_hooks(synthetic, planted, batch):
    syn, d = planted
    n = synthetic.n_layers
    weights = LayerWeights.from_kernels(n, Kernel(1.0, 1.5, 1.3, 0.4), Kernel(2.5, 1.0, 0.8, 0.1))
    assert weights.attn != weights.mlp
    edited = last_logits(weighted_orthogonalize(synthetic, d, weights), batch)
    hooked = last_logits(synthetic, batch, fwd_hooks=weighted_hooks(synthetic, d, weights))
    plain = last_logits(synthetic, batch)
    assert (edited - plain).abs().max() > 1e-2  # the edit does something
    assert torch.allclose(edited, hooked, atol=1e-4), (edited - hooked).abs().max()


def test_uniform_weights_are_the_paper_orthogonalization(synthetic, planted, batch):
    syn, d = planted
    work = WeightedModel(synthetic, d)
    ones = last_logits(work.apply(LayerWeights.uniform(synthetic.n_layers)), batch)
    assert torch.allclose(ones, last_logits(orthogonalize(synthetic, d), batch), atol=1e-5)
    # apply restores the originals first: zero weights give the unedited model back
    zero = last_logits(work.apply(LayerWeights.uniform(synthetic.n_layers, 0.0)), batch)
    assert torch.allclose(zero, last_logits(synthetic, batch), atol=1e-5)
    assert work.model.info["orthogonalized"][-1]["layer_weights"]["embed"] == 0.0


def test_search_records_a_front(synthetic, planted):
    syn, d = planted
    res = search_weights(synthetic, d, syn.harmful[40:48], syn.harmless[40:48], n_trials=5,
                         max_new_tokens=4, batch_size=8,
                         random_vector=random_like(d.vector, seed=3))
    assert res["n_trials"] == 5 and res["uniform"]["number"] == 0
    assert list(res["uniform"]["weights"]["attn"]) == [1.0] * synthetic.n_layers
    assert res["uniform"]["refusal"] <= 0.25  # full ablation of the planted direction
    assert res["random"]["refusal"] >= 0.75
    assert res["pareto"] and all(0 <= t["refusal"] <= 1 and t["kl"] >= -1e-9
                                 for t in res["trials"])
    assert res["chosen"]["refusal"] <= res["uniform"]["refusal"]
    with pytest.raises(ValueError, match="n_trials"):
        search_weights(synthetic, d, syn.harmful[:2], syn.harmless[:2], n_trials=0)


def test_search_keeps_to_its_time_budget(synthetic, planted):
    syn, d = planted
    kw = dict(max_new_tokens=4, batch_size=8)
    one = search_weights(synthetic, d, syn.harmful[40:48], syn.harmless[40:48], n_trials=1, **kw)
    trial_s = one["trials"][0]["seconds"]
    # room for about two more trials after the first: never one that would overrun the budget
    budget = 2.5 * trial_s
    res = search_weights(synthetic, d, syn.harmful[40:48], syn.harmless[40:48], n_trials=50,
                         timeout_s=budget, **kw)
    assert 1 <= res["n_trials"] < 50 and res["budget_s"] == budget
    assert sum(t["seconds"] for t in res["trials"][1:]) <= budget
    assert res["uniform"]["number"] == 0
    tiny = search_weights(synthetic, d, syn.harmful[40:48], syn.harmless[40:48], n_trials=50,
                          timeout_s=1e-6, **kw)
    assert tiny["n_trials"] == 1  # the uniform trial always runs


def test_choose_point_rule():
    trials = [{"number": 0, "refusal": 0.1, "kl": 0.5}, {"number": 1, "refusal": 0.05, "kl": 0.4},
              {"number": 2, "refusal": 0.3, "kl": 0.01}, {"number": 3, "refusal": 0.1, "kl": 0.2}]
    assert choose_point(trials, [1, 2, 3])["number"] == 3  # refusal <= uniform's, lowest KL
    assert choose_point(trials, [2])["number"] == 0  # nothing as good at refusal: uniform


def test_weighted_model_exports_with_its_weights(synthetic, planted, batch, tmp_path):
    import json

    from transformers import AutoModelForCausalLM

    from refusal_lens.export import EXPORT_META, export_hf

    syn, d = planted
    weights = LayerWeights.from_kernels(synthetic.n_layers, Kernel(2.0, 1.0, 1.0, 0.5))
    m = weighted_orthogonalize(synthetic, d, weights)
    out = export_hf(m, tmp_path / "weighted")
    meta = json.loads((out / EXPORT_META).read_text())
    assert meta["orthogonalized"][-1]["layer_weights"]["attn"] == list(weights.attn)
    hf = AutoModelForCausalLM.from_pretrained(out)
    pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=pos).logits[:, -1]
    assert torch.allclose(logits, last_logits(m, batch), atol=1e-4)
