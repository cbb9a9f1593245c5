"""Direction objects (save / load / validation), random controls and difference-in-means candidates."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from refusal_lens.directions import Direction, DirectionError, mean_diff_candidates, random_like



def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1))


def test_save_load_round_trip(tmp_path):
    vec = torch.randn(64, generator=torch.Generator().manual_seed(3))
    d = Direction(vec, layer=2, position=-1, model="synthetic", dataset_hash="abc123", seed=7)
    st, js = d.save(tmp_path / "dir")
    assert st.name == "dir.safetensors" and js.name == "dir.json"
    with safe_open(str(st), "pt") as fh:
        assert list(fh.keys()) == ["direction"]
        assert json.loads(fh.metadata()["refusal_lens"])["layer"] == 2
    meta = json.loads(js.read_text())
    assert {k: meta[k] for k in ("model", "layer", "position", "dataset_hash", "seed")} == {
        "model": "synthetic", "layer": 2, "position": -1, "dataset_hash": "abc123", "seed": 7}
    assert meta["d_model"] == 64 and meta["norm"] == pytest.approx(float(vec.norm()))
    for path in (st, js, tmp_path / "dir"):  # any of the two files, or the stem
        back = Direction.load(path)
        assert torch.equal(back.vector.float(), vec)
        assert (back.layer, back.position, back.model, back.dataset_hash, back.seed) == (
            2, -1, "synthetic", "abc123", 7)


def test_load_onto_other_width_is_refused(tmp_path, synthetic):
    Direction(torch.ones(576), layer=10, position=-1, model="SmolLM2").save(tmp_path / "wide")
    with pytest.raises(DirectionError, match=r"width 576.*d_model 64.*SmolLM2"):
        Direction.load(tmp_path / "wide.safetensors", model=synthetic)
    with pytest.raises(DirectionError, match="width 576"):
        Direction.load(tmp_path / "wide").check_width(synthetic)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Direction.save"):
        Direction.load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"other": torch.ones(4)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(DirectionError, match="no tensor named 'direction'"):
        Direction.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_vector_is_refused(bad):
    vec = torch.ones(8)
    vec[3] = bad
    with pytest.raises(DirectionError, match="NaN or inf"):
        Direction(vec, layer=0, position=-1)


def test_zero_vector_is_refused():
    with pytest.raises(DirectionError, match="zero vector"):
        Direction(torch.zeros(8), layer=0, position=-1)


def test_unit_and_norm():
    d = Direction(torch.tensor([3.0, 4.0]), layer=0, position=-1)
    assert d.norm == pytest.approx(5.0)
    assert torch.allclose(d.unit, torch.tensor([0.6, 0.8]))


def test_random_like_is_norm_matched_and_seeded():
    vec = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 5
    r0, r0_again, r1 = random_like(vec, seed=0), random_like(vec, seed=0), random_like(vec, seed=1)
    assert r0.dtype == vec.dtype and r0.shape == vec.shape
    assert float(r0.norm()) == pytest.approx(float(vec.norm()), rel=1e-6)
    assert float(r1.norm()) == pytest.approx(float(vec.norm()), rel=1e-6)
    assert torch.equal(r0, r0_again)
    assert not torch.allclose(r0, r1)
    assert abs(_cos(r0, vec)) < 0.5  # a control, not a copy
    assert random_like(vec.double(), seed=0).dtype == torch.float64


@pytest.fixture(scope="module")
def synthetic_candidates(synthetic):
    syn = synthetic.info["synthetic"]
    cands = mean_diff_candidates(synthetic, syn.harmful[:96], syn.harmless[:96], batch_size=48)
    return syn, cands


def test_mean_diff_candidates_shape_dtype(synthetic, synthetic_candidates):
    _, cands = synthetic_candidates
    positions = synthetic.post_instruction_positions
    assert cands.shape == (synthetic.n_layers, len(positions), synthetic.d_model)
    assert cands.dtype == torch.float64
    assert torch.isfinite(cands).all()


def test_mean_diff_candidates_find_planted_direction(synthetic, synthetic_candidates):
    syn, cands = synthetic_candidates
    # The planted direction is moved to the last positions by layer plant_layer; from the
    # next layer on the last-position candidate points along it.
    for layer in range(syn.plant_layer + 1, synthetic.n_layers):
        assert _cos(cands[layer, -1], syn.direction) > 0.9, layer


def test_mean_diff_candidates_subset(synthetic):
    syn = synthetic.info["synthetic"]
    full = mean_diff_candidates(synthetic, syn.harmful[:8], syn.harmless[:8])
    part = mean_diff_candidates(synthetic, syn.harmful[:8], syn.harmless[:8], layers=[2, 3],
                                positions=[-1])
    assert part.shape == (2, 1, synthetic.d_model)
    assert torch.allclose(part[:, 0], full[2:4, -1], atol=1e-6)


@pytest.mark.parametrize("which", ["harmful", "harmless"])
def test_mean_diff_candidates_empty_list(synthetic, which):
    syn = synthetic.info["synthetic"]
    harmful, harmless = (([], syn.harmless[:4]) if which == "harmful" else (syn.harmful[:4], []))
    with pytest.raises(DirectionError, match=f"No {which} prompts"):
        mean_diff_candidates(synthetic, harmful, harmless)


# ---- direction files are self-describing: the safetensors header is the source of truth ----


def test_missing_json_reads_the_header(tmp_path):
    Direction(torch.ones(8), layer=2, position=-3, model="m", seed=5).save(tmp_path / "d")
    (tmp_path / "d.json").unlink()
    d = Direction.load(tmp_path / "d.safetensors")
    assert (d.layer, d.position, d.model, d.seed) == (2, -3, "m", 5)


def test_json_that_disagrees_with_the_header_is_an_error(tmp_path):
    Direction(torch.ones(8), layer=2, position=-3, model="m").save(tmp_path / "d")
    meta = json.loads((tmp_path / "d.json").read_text())
    (tmp_path / "d.json").write_text(json.dumps(meta | {"model": "Qwen-72B-chat", "layer": 999}))
    with pytest.raises(DirectionError, match=r"disagrees.*\['layer', 'model'\].*source of truth"):
        Direction.load(tmp_path / "d")


def test_truncated_or_headerless_file_is_a_clear_error(tmp_path):
    st, _ = Direction(torch.ones(64), layer=2, position=-1).save(tmp_path / "d")
    st.write_bytes(st.read_bytes()[:-40])
    with pytest.raises(DirectionError, match="truncated.*save the direction again"):
        Direction.load(st)
    from safetensors.torch import save_file

    save_file({"direction": torch.ones(4)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(DirectionError, match="no refusal_lens metadata"):
        Direction.load(tmp_path / "bare.safetensors")


def test_direction_from_another_model_warns_and_bad_layer_errors(synthetic):
    from refusal_lens.errors import DirectionTransferWarning

    d = Direction(torch.ones(synthetic.d_model), layer=1, position=-1, model="Qwen-1_8B-chat")
    with pytest.warns(DirectionTransferWarning, match="fitted on 'Qwen-1_8B-chat'"):
        notes = d.check_width(synthetic)
    assert notes and "cross-model" in notes[0]
    assert Direction(torch.ones(64), 1, -1, model="synthetic").check_width(synthetic) == []
    with pytest.raises(DirectionError, match="layer 99 is outside"):
        Direction(torch.ones(64), 99, -1, model="synthetic").check_width(synthetic)


def test_save_load_keeps_a_stem_with_dots(tmp_path):
    """A model spec such as qwen2.5-coder-0.5b-instruct names a file: nothing is cut at a dot."""
    d = Direction(torch.randn(8, dtype=torch.float64), 3, -1, model="m")
    st, js = d.save(tmp_path / "qwen2.5-coder-0.5b-instruct")
    assert st.name == "qwen2.5-coder-0.5b-instruct.safetensors"
    assert js.name == "qwen2.5-coder-0.5b-instruct.json"
    back = Direction.load(tmp_path / "qwen2.5-coder-0.5b-instruct")
    assert back.layer == 3 and torch.equal(back.vector, d.vector.float().double())
