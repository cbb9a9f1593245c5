"""The attention-sink subspace and directions projected off it."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.directions import Direction, random_like
from refusal_lens.interventions import ablation
from refusal_lens.execution import last_logits
from refusal_lens.scoring import last_position_kl
from refusal_lens.selection import SelectionConfig, select_direction
from refusal_lens.sinks import first_token_residuals, project_off_basis, sink_basis


def test_basis_is_orthonormal_and_grows_with_energy(synthetic):
    ranks = []
    for energy in (0.5, 0.9, 0.99):
        basis, info = sink_basis(synthetic, energy)
        k = basis.shape[0]
        assert info["rank"] == k and info["energy_kept"] >= energy
        assert torch.allclose(basis @ basis.T, torch.eye(k, dtype=torch.float64), atol=1e-10)
        ranks.append(k)
    assert ranks == sorted(ranks)
    empty, info = sink_basis(synthetic, 0.0)
    assert empty.shape == (0, synthetic.d_model) and info["rank"] == 0
    with pytest.raises(ValueError, match="energy"):
        sink_basis(synthetic, 1.0)


def test_basis_spans_the_first_token_residuals(synthetic):
    res = first_token_residuals(synthetic)
    assert res.shape == (synthetic.n_layers + 1, synthetic.d_model)
    basis, info = sink_basis(synthetic, 0.99)
    unit = res / res.norm(dim=-1, keepdim=True)
    kept = ((unit @ basis.T) ** 2).sum() / (unit**2).sum()
    assert float(kept) == pytest.approx(info["energy_kept"], abs=1e-9)


def test_projection_is_orthogonal_and_idempotent(synthetic):
    basis, _ = sink_basis(synthetic, 0.9)
    v = torch.randn(3, synthetic.d_model, generator=torch.Generator().manual_seed(0))
    p = project_off_basis(v, basis)
    assert p.dtype == v.dtype
    assert (p.double() @ basis.T).abs().max() < 1e-5
    assert torch.allclose(project_off_basis(p, basis), p, atol=1e-6)
    assert torch.equal(project_off_basis(v, basis[:0]), v)
    with pytest.raises(ValueError, match="width"):
        project_off_basis(torch.ones(5), basis)


def test_random_control_is_drawn_off_the_basis(synthetic):
    basis, _ = sink_basis(synthetic, 0.9)
    vec = torch.randn(synthetic.d_model, generator=torch.Generator().manual_seed(1)).double()
    r = random_like(vec, seed=3, basis=basis)
    assert float(r.norm()) == pytest.approx(float(vec.norm()))
    assert (r @ basis.T).abs().max() < 1e-9
    assert not torch.equal(r, random_like(vec, seed=3))


def test_selection_projects_candidates_and_keeps_the_raw_vector(synthetic, tmp_path):
    syn = synthetic.info["synthetic"]
    data = dict(harmful_train=syn.harmful[:32], harmless_train=syn.harmless[:32],
                harmful_val=syn.harmful[32:48], harmless_val=syn.harmless[32:48],
                refusal_ids=synthetic.tokenizer.convert_tokens_to_ids(["I"]))
    res = select_direction(synthetic, **data, config=SelectionConfig(top_k=3), progress=False)
    d = res.direction
    basis = d.tensors["sink_basis"].double()
    assert basis.shape[0] == res.sink["rank"] > 0
    assert (d.vector.double() @ basis.T).abs().max() < 1e-5
    raw = d.tensors["mean_diff"].double()
    assert torch.allclose(project_off_basis(raw, basis), d.vector.double(), atol=1e-5)
    assert res.sink["kept_norm_frac_chosen"] == pytest.approx(d.norm / float(raw.norm()), rel=1e-5)
    d.save(tmp_path / "d")
    back = Direction.load(tmp_path / "d")
    assert set(back.tensors) == {"mean_diff", "sink_basis"}
    assert torch.equal(back.tensors["sink_basis"], d.tensors["sink_basis"])
    off = select_direction(synthetic, **data, config=SelectionConfig(top_k=3, sink_energy=0.0),
                           progress=False)
    assert off.direction.tensors["sink_basis"].shape[0] == 0
    assert torch.equal(off.direction.vector.float(), off.direction.tensors["mean_diff"])


@pytest.mark.embedded
def test_sink_projection_spares_the_first_token_embedded(embedded, embedded_direction):
    """The organism parks a ~2.5e4-norm residual on its first token; ablating a direction's
    component along it costs KL that has nothing to do with the direction."""
    m = embedded
    basis, info = sink_basis(m)
    assert info["max_first_token_norm"] > 1e4 and 1 <= info["rank"] <= 8
    prompts = ["Write a haiku about autumn leaves.", "Give three tips for staying healthy.",
               "What is the capital of France?", "Describe a sunset."]
    batch = m.encode_instructions(prompts)
    base = last_logits(m, batch)

    def kl(vec):
        return float(last_position_kl(base, last_logits(m, batch, [ablation(m, vec)])).mean())

    raw = random_like(embedded_direction.vector, seed=0)
    kept = project_off_basis(raw, basis)
    assert float(kept.norm() / raw.norm()) > 0.95  # a small change to the vector ...
    assert kl(kept) < 0.5 * kl(raw)  # ... removes most of the direction-agnostic KL
