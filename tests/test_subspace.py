"""Subspace ablation: the basis starts at the direction, the hooks project off the span, and
ablating more directions removes refusal where random subspaces do not (synthetic model)."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.directions import Direction
from refusal_lens.interventions import ablation_hooks
from refusal_lens.execution import last_logits
from refusal_lens.subspace import (
    random_subspace,
    refusal_subspace,
    site_activations,
    subspace_ablation_hooks,
    subspace_sweep,
)


@pytest.fixture(scope="module")
def basis(synthetic, planted):
    syn, d = planted
    return refusal_subspace(synthetic, d, syn.harmful[20:44], syn.harmless[20:44], k=3)


def test_basis_is_orthonormal_and_starts_at_the_direction(synthetic, planted, basis):
    syn, d = planted
    b, info = basis
    assert b.shape == (3, synthetic.d_model)
    assert torch.allclose(b @ b.T, torch.eye(3, dtype=b.dtype), atol=1e-8)
    assert torch.allclose(b[0], d.unit.double(), atol=1e-8)
    assert info["mean_diff_along_u"][0] > 0  # harmful prompts sit along +u
    assert len(info["singular_values"]) >= 2


def test_site_activations_match_the_mean_difference(synthetic, planted):
    syn, d = planted
    h = site_activations(synthetic, syn.harmful[:6], d.layer, -1, batch_size=4)
    s = site_activations(synthetic, syn.harmless[:6], d.layer, -1, batch_size=4)
    r = synthetic.resid_means(syn.harmful[:6], layers=[d.layer], positions=[-1])[0, 0] \
        - synthetic.resid_means(syn.harmless[:6], layers=[d.layer], positions=[-1])[0, 0]
    assert torch.allclose(h.mean(0) - s.mean(0), r.cpu().double(), atol=1e-4)
    with pytest.raises(ValueError, match="negative"):
        site_activations(synthetic, syn.harmful[:2], d.layer, 0)


def test_hooks_project_off_the_span(synthetic, planted, basis):
    syn, d = planted
    b, _ = basis
    x = torch.randn(2, 4, synthetic.d_model)
    y = x
    hooks = subspace_ablation_hooks(synthetic, b)
    first = hooks[0][0]
    for name, fn in hooks:
        if name == first:
            y = fn(y)
    bf = b.float()
    assert torch.allclose(y, x - (x @ bf.T) @ bf, atol=1e-5)
    batch = synthetic.encode_instructions(syn.harmful[:4])
    one = last_logits(synthetic, batch, fwd_hooks=subspace_ablation_hooks(synthetic, b[:1]))
    assert torch.allclose(one, last_logits(synthetic, batch,
                                           fwd_hooks=ablation_hooks(synthetic, d)), atol=1e-5)
    with pytest.raises(ValueError, match="orthonormal"):
        subspace_ablation_hooks(synthetic, b * 2)


def test_random_subspace(synthetic, planted):
    syn, d = planted
    sink = torch.linalg.qr(torch.randn(synthetic.d_model, 2, dtype=torch.float64))[0].T
    r = random_subspace(synthetic.d_model, 3, seed=1, basis=sink)
    assert torch.allclose(r @ r.T, torch.eye(3, dtype=r.dtype), atol=1e-8)
    assert (r @ sink.T).abs().max() < 1e-8
    assert torch.equal(r, random_subspace(synthetic.d_model, 3, seed=1, basis=sink))
    with pytest.raises(ValueError):
        random_subspace(synthetic.d_model, 0)


def test_subspace_sweep(synthetic, planted, basis):
    syn, d = planted
    b, _ = basis
    res = subspace_sweep(synthetic, b, syn.harmful[:12], syn.harmless[:12], ks=[1, 3],
                         max_new_tokens=6, progress=False)
    assert res["baseline"]["harmful"]["rate"] >= 0.8
    for row in res["rows"]:
        assert row["subspace"]["refusal"]["rate"] <= 0.2, row
        assert row["random"]["refusal"]["rate"] >= 0.8, row
        assert row["subspace"]["ce"] > 0
    with pytest.raises(ValueError, match="ks"):
        subspace_sweep(synthetic, b, syn.harmful[:2], syn.harmless[:2], ks=[4])
    with pytest.raises(ValueError, match="k = 99"):
        refusal_subspace(synthetic, Direction(syn.direction, d.layer, -1), syn.harmful[:3],
                         syn.harmless[:3], k=99)
