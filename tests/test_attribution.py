"""Direct feature attribution: the components add up exactly to the projection of the residual."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.attribution import dfa_by_condition, direct_feature_attribution, head_table
from refusal_lens.directions import Direction

TOL = 1e-4



def test_components_sum_to_total_on_synthetic(synthetic, planted):
    syn, d = planted
    for layer in range(synthetic.n_layers):
        dfa = direct_feature_attribution(synthetic, syn.harmful[:6] + syn.harmless[:2], d,
                                         layer=layer)
        labels, comps = dfa.components()
        assert comps.shape == (8, len(labels))
        assert dfa.error() < TOL, (layer, dfa.error())
    assert dfa.heads.shape == (8, synthetic.n_layers - 1, synthetic.n_heads)


def test_planted_mover_head_ranks_first(synthetic, planted):
    syn, d = planted
    dfa = direct_feature_attribution(synthetic, syn.harmful[:8], d)
    assert dfa.top_heads(1) == [(syn.plant_layer, 0)]
    harmless = direct_feature_attribution(synthetic, syn.harmless[:8], d)
    assert harmless.heads[:, syn.plant_layer, 0].abs().max() < 1e-3


def test_heads_sum_to_attention_output_with_gqa(synthetic, planted):
    """hook_z is per query head (4 query, 2 KV heads): z @ W_O summed over heads is attn_out."""
    syn, d = planted
    batch = synthetic.encode_instructions(syn.harmful[:3])
    names = [f"blocks.{l}.attn.hook_z" for l in range(synthetic.n_layers)]
    names += [f"blocks.{l}.hook_attn_out" for l in range(synthetic.n_layers)]
    _, cache = synthetic.bridge.run_with_cache(batch.input_ids, names_filter=names,
                                               **batch.forward_kwargs())
    assert synthetic.hf_model.config.num_key_value_heads < synthetic.n_heads
    for l in range(synthetic.n_layers):
        z = cache[f"blocks.{l}.attn.hook_z"].double()
        per_head = torch.einsum("bphd,hdm->bphm", z, synthetic.bridge.W_O[l].double())
        assert z.shape[2] == synthetic.n_heads
        torch.testing.assert_close(per_head.sum(2), cache[f"blocks.{l}.hook_attn_out"].double(),
                                   atol=1e-5, rtol=0)


def test_head_table_and_conditions(synthetic, planted):
    syn, d = planted
    dfas = dfa_by_condition(synthetic, d, {"a": syn.harmful[:3], "b": syn.harmless[:3]},
                            progress=False)
    table = head_table(dfas, [(1, 0)])
    assert set(table["L1H0"]) == {"a", "b"}
    assert table["L1H0"]["a"][0] > table["L1H0"]["b"][0]


def test_bad_layer(synthetic, planted):
    syn, d = planted
    with pytest.raises(ValueError, match="layer"):
        direct_feature_attribution(synthetic, syn.harmful[:2], d, layer=99)


@pytest.mark.embedded
def test_components_sum_to_total_on_embedded(embedded):
    from refusal_lens.datasets import load_splits

    s = load_splits(seed=0)
    gen = torch.Generator().manual_seed(0)
    d = Direction(torch.randn(embedded.d_model, generator=gen), layer=20, position=-1)
    prompts = s.harmful_test[:3] + s.harmless_test[:2]
    dfa = direct_feature_attribution(embedded, prompts, d)
    assert dfa.heads.shape == (5, 20, embedded.n_heads)
    assert dfa.error() < TOL, dfa.error()
    assert dfa.total.abs().max() > 1.0  # a non-trivial projection is being decomposed


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 3), st.integers(1, 4),
       st.sampled_from([torch.float32, torch.float64]))
def test_dfa_components_sum_to_the_total_for_random_directions(synthetic, planted, seed, layer,
                                                               n, dtype):
    syn, _ = planted
    vec = torch.randn(synthetic.d_model, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64).to(dtype)
    dfa = direct_feature_attribution(synthetic, (syn.harmful + syn.harmless)[:n], vec, layer=layer)
    assert dfa.components()[1].shape == (n, 2 + layer * (synthetic.n_heads + 2))
    assert dfa.error() < 1e-6 * max(1.0, float(dfa.total.abs().max()))
