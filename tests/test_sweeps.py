"""Strength sweeps: partial ablation is the scaled projection, and refusal moves with strength
for the planted direction but not for its norm-matched random control (synthetic model)."""

from __future__ import annotations

import json

import pytest
import torch

from refusal_lens.directions import Direction
from refusal_lens.interventions import ablation, ablation_hooks
from refusal_lens.execution import last_logits
from refusal_lens.sweeps import check_strengths, strength_sweep


def test_partial_ablation_is_the_scaled_projection(synthetic, planted):
    syn, d = planted
    u = d.unit.float()
    x = torch.randn(3, 5, synthetic.d_model)
    for alpha in (0.0, 0.3, 1.0):
        fn = ablation_hooks(synthetic, d, strength=alpha)[0][1]
        want = x - alpha * (x @ u)[..., None] * u
        assert torch.allclose(fn(x), want, atol=1e-5), alpha
    # strength 1 keeps today's hook exactly (the unit vector itself)
    iv = ablation(synthetic, d)
    vec = iv.placed(synthetic)[0]
    assert iv.op == "ablate" and torch.equal(vec, (d.vector / d.vector.norm()).to(vec))
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="strength"):
            ablation_hooks(synthetic, d, strength=bad)


def test_partial_ablation_plain_path_equals_bridge(synthetic, planted):
    """The scaled projection on the plain modules gives the bridge's logits."""
    syn, d = planted
    batch = synthetic.encode_instructions(syn.harmful[:4] + syn.harmless[:4])
    plain = last_logits(synthetic, batch, [ablation(synthetic, d, strength=0.4)])
    hooks = ablation_hooks(synthetic, d, strength=0.4)
    bridge = last_logits(synthetic, batch, fwd_hooks=hooks)  # hooks: run through the bridge
    assert torch.allclose(plain, bridge, atol=1e-4)
    none = last_logits(synthetic, batch, [ablation(synthetic, d, strength=0.0)])
    assert torch.allclose(none, last_logits(synthetic, batch), atol=1e-5)


@pytest.fixture(scope="module")
def swept(synthetic, planted):
    syn, d = planted
    strong = Direction(syn.direction * 4, layer=d.layer, position=-1)
    return strength_sweep(synthetic, strong, syn.harmful[:12], syn.harmless[:12],
                          alphas=(0.5, 1.0), coefficients=(0.25, 1.0), max_new_tokens=6,
                          progress=False)


def test_sweep_moves_refusal_with_strength(swept):
    base = swept["baseline"]
    assert base["harmful"]["rate"] >= 0.8 and base["harmless"]["rate"] <= 0.2
    full = swept["ablation"][-1]
    assert full["strength"] == 1.0
    assert full["direction"]["refusal"]["rate"] <= 0.2
    assert full["random"]["refusal"]["rate"] >= 0.8  # the control at the same strength
    add = swept["addition"][-1]
    assert add["direction"]["refusal"]["rate"] >= 0.8 >= 0.2 >= add["random"]["refusal"]["rate"]
    assert swept["random_norm"] == pytest.approx(swept["direction_norm"], rel=1e-5)
    for kind in ("ablation", "addition"):
        for row in swept[kind]:
            for arm in ("direction", "random"):
                assert row[arm]["ce"] > 0 and row[arm]["kl"] >= -1e-9
                assert row[arm]["refusal"]["n"] == 12


def test_sweep_figure(swept):
    from refusal_lens.plots_beyond import strength_sweep_figure

    fig = strength_sweep_figure([swept, swept | {"seed": 1}])
    assert len(fig.data) == 16  # 2 seeds x 2 panels x (direction, random) x (rate, CE)
    assert list(fig.data[0].x) == [0.0, 0.5, 1.0]
    # a caption on two lines gets the room the first one had, plus a line's worth, on top of
    # the same plot height
    one = strength_sweep_figure([swept], title="t<br><sup>caption</sup>").layout
    two = strength_sweep_figure([swept], title="t<br><sup>caption<br>grey</sup>").layout
    assert two.margin.t == one.margin.t + 40 and two.height == one.height + 40


def test_bad_strengths_are_refused_before_work(synthetic, planted):
    syn, d = planted
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_strengths([1.5], [1.0])
    with pytest.raises(ValueError, match="finite"):
        check_strengths([0.5], [float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        check_strengths([], [])
    with pytest.raises(ValueError, match="one per prompt"):
        strength_sweep(synthetic, d, syn.harmful[:2], syn.harmless[:2], reference=["a"])


def test_sweep_cli(synthetic, planted, tmp_path, capsys):
    from refusal_lens.cli import main

    syn, d = planted
    Direction(syn.direction * 4, layer=d.layer, position=-1).save(tmp_path / "dir")
    args = ["sweep", "--model", "synthetic", "--direction", str(tmp_path / "dir.safetensors"),
            "--alphas", "1", "--coefficients", "1", "--n", "8", "--max-new-tokens", "6",
            "--out", str(tmp_path / "sweep")]
    assert main(args) == 0
    res = json.loads((tmp_path / "sweep.json").read_text())["seeds"][0]
    assert res["n_harmful"] == 8 and res["ablation"][0]["strength"] == 1.0
    assert (tmp_path / "sweep.html").is_file()
    assert main(args) == 1  # exists: refused without --force
    assert "--force" in capsys.readouterr().err
    assert main(args[:5] + ["--alphas", "2", "--out", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x.json").exists()
