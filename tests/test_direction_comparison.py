"""Comparing directions: cosines layer by layer, against chance."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refusal_lens.direction_comparison import chance_cosine, layer_cosines, layer_mean_diffs
from refusal_lens.directions import mean_diff_candidates


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(2, 12), st.integers(0, 2**31 - 1),
       st.floats(0.1, 10.0))
def test_layer_cosines_match_the_definition_and_ignore_scale(layers, d, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(layers, d, generator=gen), torch.randn(layers, d, generator=gen)
    cos = layer_cosines(a, b)
    want = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
    assert torch.allclose(cos, want, atol=1e-12)
    assert torch.allclose(layer_cosines(a * scale, -b), -want, atol=1e-12)
    assert torch.allclose(layer_cosines(a, a), torch.ones(layers, dtype=torch.float64))


def test_layer_cosines_nan_for_zero_rows_and_refuse_other_shapes():
    a = torch.zeros(2, 3)
    a[1, 0] = 1.0
    cos = layer_cosines(a, torch.ones(2, 3))
    assert math.isnan(cos[0]) and cos[1] == pytest.approx(3 ** -0.5)
    with pytest.raises(ValueError, match="shapes"):
        layer_cosines(torch.ones(2, 3), torch.ones(3, 3))


def test_chance_cosine_is_the_random_directions_quantile():
    for d in (64, 576, 896):
        c = chance_cosine(d)
        assert 2.2 / d ** 0.5 < c < 3.0 / d ** 0.5  # 99th pct of |N(0, 1/d)|: 2.58/sqrt(d)
    assert chance_cosine(576, quantile=0.5) < chance_cosine(576)


def test_layer_mean_diffs_are_mean_diff_candidates_at_one_position(synthetic):
    syn = synthetic.info["synthetic"]
    h, s = syn.harmful[:8], syn.harmless[:8]
    got = layer_mean_diffs(synthetic, h, s, position=-1)
    want = mean_diff_candidates(synthetic, h, s, layers=range(synthetic.n_layers),
                                positions=[-1])[:, 0]
    assert got.shape == (synthetic.n_layers, synthetic.d_model)
    assert torch.equal(got, want)
    planted = syn.direction.double()
    assert layer_cosines(got[-1:], planted[None])[0] > 0.9
