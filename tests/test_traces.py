"""Cosine traces on the synthetic model, whose refusal direction is planted."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.suffixes import suffix_conditions
from refusal_lens.traces import CosineTraces, cosine_traces, last_token_cosines



def test_last_token_cosines_shape_and_range(synthetic, planted):
    syn, d = planted
    cos = last_token_cosines(synthetic, syn.harmful[:5], d)
    assert cos.shape == (5, synthetic.n_layers + 1)
    assert cos.dtype == torch.float64 and (cos.abs() <= 1 + 1e-9).all()
    assert last_token_cosines(synthetic, syn.harmful[:5], d, include_final=False).shape == (5, 4)


def test_planted_direction_separates_harmful_from_harmless(synthetic, planted):
    syn, d = planted
    conds = suffix_conditions(syn.harmful[:8], syn.harmless[:8], "you write", ["cake robot"])
    tr = cosine_traces(synthetic, d, conds, progress=False)
    assert isinstance(tr, CosineTraces)
    assert tr.conditions == ["harmful", "harmful + adversarial suffix",
                             "harmful + random suffix", "harmless"]
    assert tr.mean.shape == tr.std.shape == (4, synthetic.n_layers + 1)
    at = tr.at_layer()
    assert at["harmful"][0] > 0.5 > abs(at["harmless"][0])
    assert tr.site_labels[-1] == f"post {synthetic.n_layers - 1}"
    assert set(tr.to_dict()["mean"]) == set(conds)


def test_batching_does_not_change_cosines(synthetic, planted):
    syn, d = planted
    prompts = syn.harmful[:3] + syn.harmless[:3]
    a = last_token_cosines(synthetic, prompts, d, batch_size=6)
    b = last_token_cosines(synthetic, prompts, d, batch_size=1)
    assert torch.allclose(a, b, atol=1e-5)


def test_errors(synthetic, planted):
    syn, d = planted
    with pytest.raises(ValueError, match="no prompts"):
        cosine_traces(synthetic, d, {"harmful": []}, progress=False)
    with pytest.raises(ValueError, match="at least one"):
        cosine_traces(synthetic, d, {}, progress=False)
    with pytest.raises(ValueError, match="width"):
        last_token_cosines(synthetic, syn.harmful[:2], torch.ones(7))
