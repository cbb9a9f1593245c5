"""Logit lens of a direction: the model's final norm and unembedding, applied as the model does."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.logit_lens import direction_logits, logit_lens


def test_matches_the_hf_final_norm_and_lm_head(synthetic):
    hf = synthetic.hf_model
    x = torch.randn(3, synthetic.d_model, generator=torch.Generator().manual_seed(0))
    norm, head = hf.model.norm, hf.lm_head
    w = dict(norm.named_parameters())
    weight = next(v for k, v in w.items() if k.endswith("weight")).detach().float()
    eps = getattr(norm, "variance_epsilon", None) or getattr(
        getattr(norm, "original_component", norm), "variance_epsilon")
    manual = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight) \
        @ head.weight.detach().float().T
    assert torch.allclose(direction_logits(synthetic, x), manual, atol=1e-4)


def test_planted_direction_promotes_the_refusal_token(synthetic):
    syn = synthetic.info["synthetic"]
    lens = logit_lens(synthetic, {2: syn.direction, 3: -syn.direction,
                                  0: torch.zeros(synthetic.d_model)}, k=3)
    by_layer = {r["layer"]: r for r in lens["layers"]}
    assert lens["zero_layers"] == [0] and set(by_layer) == {2, 3}
    assert by_layer[2]["promoted"][0][0] == "I"   # "I cannot ..." is the planted refusal
    assert by_layer[3]["suppressed"][0][0] == "I"
    assert by_layer[2]["promoted"][0][1] > 0 > by_layer[3]["suppressed"][0][1]


def test_bad_input(synthetic):
    with pytest.raises(ValueError, match="shape"):
        direction_logits(synthetic, torch.ones(2, synthetic.d_model + 1))
    with pytest.raises(ValueError, match="Every vector is zero"):
        logit_lens(synthetic, {1: torch.zeros(synthetic.d_model)})
    with pytest.raises(ValueError, match="at least one layer"):
        logit_lens(synthetic, {})


@pytest.mark.embedded
def test_matches_hf_on_the_embedded_model(embedded_base):
    hf = embedded_base.hf_model
    x = torch.randn(2, embedded_base.d_model, generator=torch.Generator().manual_seed(1))
    norm = getattr(hf.model.norm, "original_component", hf.model.norm)
    manual = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
              * norm.weight.detach().float()) @ hf.lm_head.weight.detach().float().T
    got = direction_logits(embedded_base, x)
    assert got.shape == (2, embedded_base.bridge.cfg.d_vocab)
    assert torch.allclose(got, manual, atol=1e-3, rtol=1e-4)
