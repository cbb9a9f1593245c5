"""Per-category directions on the synthetic model: every category recovers the planted
direction; small categories are skipped; rates split by category."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.category_directions import (
    category_directions,
    cosine_matrix,
    random_cosines,
    rates_by_category,
)


@pytest.fixture(scope="module")
def cats(synthetic, planted):
    syn, d = planted
    groups = {"a": syn.harmful[:12], "b": syn.harmful[12:24], "tiny": syn.harmful[24:27]}
    return category_directions(synthetic, groups, syn.harmless[:24], d, min_prompts=8)


def test_categories_recover_the_planted_direction(synthetic, planted, cats):
    syn, d = planted
    assert cats["names"] == ["a", "b"] and cats["skipped"] == {"tiny": 3}
    assert cats["counts"] == {"a": 12, "b": 12}
    cos = cosine_matrix(torch.cat([cats["vectors"], d.vector.double()[None]]))
    assert torch.allclose(cos.diagonal(), torch.ones(3, dtype=cos.dtype))
    assert torch.allclose(cos, cos.T)
    assert (cos > 0.9).all()  # one planted direction: every category finds it
    chance = random_cosines(d, n=50)
    assert chance["mean_abs"] < 0.3 and chance["n"] == 50


def test_rates_by_category():
    out = rates_by_category([True, False, True, True], ["x", "x", "y", "y"])
    assert list(out) == ["x", "y"]
    assert out["x"]["rate"] == 0.5 and out["y"]["rate"] == 1.0 and out["x"]["n"] == 2
    with pytest.raises(ValueError, match="one category per prompt"):
        rates_by_category([True], ["x", "y"])


def test_bad_inputs(synthetic, planted):
    syn, d = planted
    with pytest.raises(ValueError, match="min_prompts"):
        category_directions(synthetic, {"a": syn.harmful[:2]}, syn.harmless[:4], d,
                            min_prompts=8)


def test_categories_figure(cats, planted):
    from refusal_lens.plots_beyond import categories_figure

    syn, d = planted
    cos = cosine_matrix(torch.cat([cats["vectors"], d.vector.double()[None]])).tolist()
    rates = {"ablation": rates_by_category([True, False], ["x", "y"])}
    fig = categories_figure(cats["names"] + ["global"], cos, rates)
    assert len(fig.data) == 2
