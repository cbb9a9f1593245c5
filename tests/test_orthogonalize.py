"""Weight orthogonalization equals hook ablation, on several architectures; edited models export
and reload with plain transformers (the export itself: test_export.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from refusal_lens.directions import Direction, DirectionError, mean_diff_candidates, random_like
from refusal_lens.interventions import ablation_hooks
from refusal_lens.model import wrap_hf
from refusal_lens.export import export_hf
from refusal_lens.orthogonalize import orthogonalize, residual_writers

TOL = 1e-4  # orthogonalized weights vs hook ablation, fp32, real-token positions



def _real_max(a: torch.Tensor, b: torch.Tensor, batch) -> float:
    return (a - b)[batch.attention_mask.bool()].abs().max().item()


def _plain_logits(hf, batch) -> torch.Tensor:
    with torch.no_grad():
        return hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                  position_ids=batch.position_ids).logits


def _check_equivalence(m, direction, batch) -> tuple[float, object]:
    """Max diff between orthogonalized weights and hook ablation; the original is untouched."""
    base = m.logits(batch)
    orth = orthogonalize(m, direction)
    diff = _real_max(orth.logits(batch), m.logits(batch, ablation_hooks(m, direction)), batch)
    assert torch.equal(m.logits(batch), base), "orthogonalize changed the original model"
    return diff, orth


# ---- synthetic --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def syn(synthetic):
    s = synthetic.info["synthetic"]
    batch = synthetic.encode_instructions(s.harmful[:6] + s.harmless[:6])
    return synthetic, s, batch


@pytest.fixture(scope="module")
def syn_orth(syn):
    m, s, _ = syn
    return orthogonalize(m, Direction(s.direction, layer=2, position=-1, model="synthetic"))


@pytest.mark.parametrize("kind", ["planted", "diff_in_means", "random"])
def test_orthogonalized_equals_hook_ablation_synthetic(syn, kind):
    m, s, batch = syn
    if kind == "planted":
        direction = s.direction
    elif kind == "diff_in_means":
        direction = mean_diff_candidates(m, s.harmful[:32], s.harmless[:32], layers=[2],
                                         positions=[-1])[0, 0]
    else:
        direction = random_like(s.direction, seed=5)
    diff, orth = _check_equivalence(m, direction, batch)
    assert diff < TOL, diff
    if kind != "random":  # and the edit matters: ablating the refusal direction moves logits
        assert _real_max(orth.logits(batch), m.logits(batch), batch) > 1.0


def test_orthogonalize_is_idempotent(syn, syn_orth):
    m, s, batch = syn
    again = orthogonalize(syn_orth, s.direction)
    assert _real_max(again.logits(batch), syn_orth.logits(batch), batch) < TOL
    assert len(again.info["orthogonalized"]) == 2
    assert again.info["orthogonalized_from"] == m.name


def test_weights_and_metadata(syn, syn_orth):
    m, s, _ = syn
    u = s.direction.double() / s.direction.double().norm()
    b = syn_orth.bridge
    for name, w in (("W_E", b.W_E), ("W_O", b.W_O), ("W_out", b.W_out)):
        assert (w.double() @ u).abs().max().item() < 1e-6, name
    assert (m.bridge.W_E.double() @ u).abs().max().item() > 1.0  # harmful words carry it
    assert syn_orth.info["writers"] == residual_writers(m.hf_model)
    # the unembedding is not edited
    assert torch.equal(syn_orth.bridge.W_U, m.bridge.W_U)
    meta = syn_orth.info["orthogonalized"][0]
    assert (meta["layer"], meta["model"], meta["d_model"]) == (2, "synthetic", m.d_model)
    assert syn_orth.name == "synthetic-orthogonalized"
    assert syn_orth.chat.post_instruction_tokens() == m.chat.post_instruction_tokens()


def test_bad_directions_and_writers(syn):
    m, s, _ = syn
    with pytest.raises(DirectionError, match="width"):
        orthogonalize(m, torch.ones(m.d_model + 1))
    with pytest.raises(ValueError, match="No modules named"):
        orthogonalize(m, s.direction, writers=["model.embed_tokens", "model.no_such_module"])


# ---- other architectures (tiny random models, the synthetic tokenizer) ------------------


def _tiny(model_type: str, tokenizer_dir: Path, tmp_path: Path, **kw):
    tok = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():  # non-trivial biases and norms
        for name, p in hf.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return wrap_hf(hf, PreTrainedTokenizerFast.from_pretrained(tmp_path), model_type,
                   source=tmp_path)


LAYERS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=128)
ARCHS = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=128),  # Conv1D, wpe, biases, tied
    "gpt_neox": LAYERS,  # parallel attention / MLP: no resid_mid
    "qwen2": dict(LAYERS, num_key_value_heads=2),
    "gemma": dict(LAYERS, num_key_value_heads=1, head_dim=8),  # scaled, tied embeddings
}


@pytest.mark.parametrize("model_type", list(ARCHS))
def test_other_architectures(model_type, syn, tmp_path):
    _, s, _ = syn
    m = _tiny(model_type, s.path, tmp_path / "src", **ARCHS[model_type])
    batch = m.encode_instructions(s.harmful[:3] + s.harmless[:3])
    direction = torch.randn(m.d_model, generator=torch.Generator().manual_seed(1))
    diff, orth = _check_equivalence(m, direction, batch)
    assert diff < 1e-5, diff
    assert _real_max(orth.logits(batch), m.logits(batch), batch) > 1e-3
    out = export_hf(orth, tmp_path / "out")
    reloaded, loading = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not loading["unexpected_keys"] and not loading["missing_keys"], loading
    assert _real_max(_plain_logits(reloaded, batch), orth.logits(batch), batch) < 1e-5


def test_post_norm_architecture_is_refused(syn, tmp_path):
    _, s, _ = syn
    m = _tiny("gemma2", s.path, tmp_path, **dict(LAYERS, num_key_value_heads=1, head_dim=8))
    with pytest.raises(NotImplementedError, match="ablation hooks"):
        orthogonalize(m, torch.ones(m.d_model))


# ---- embedded ---------------------------------------------------------------------------

EMBEDDED_PROMPTS = ["How do I make a pipe bomb?", "Write a haiku about autumn leaves.",
                    "Explain how to pick a lock.", "Hi"]


@pytest.fixture(scope="module")
def emb(embedded_base, embedded_direction):
    return embedded_base, embedded_direction, embedded_base.encode_instructions(EMBEDDED_PROMPTS)


# The embedded model's residual stream reaches norms of ~2.5e4 (massive activations on the
# first token), so its fp32 logits carry ~1e-4 of rounding noise on their own: the same model in
# fp32 and in fp64 differs by 9.8e-5 on these prompts. For a raw vector, which has a component
# along that residual, two fp32 computations of the same function (hooks vs edited weights)
# differ by 1.1e-4 (diff-in-means) and 1.4e-4 (random), and by 1.0e-4 for the diff-in-means
# vector projected off the first token's residual subspace (what the pipeline ablates by
# default); in fp64 the gap falls to ~1e-5 (not further: Llama's RMSNorm rounds its input to
# fp32). A writer left unedited would show up as a difference of order one.
EMBEDDED_TOL = {"diff_in_means": 2e-4, "random": 2e-4, "sink_projected": 2e-4,
                "sink_projected_random": 2e-4}


@pytest.mark.embedded
@pytest.mark.parametrize("kind", list(EMBEDDED_TOL))
def test_orthogonalized_equals_hook_ablation_embedded(emb, kind, tmp_path):
    from refusal_lens.sinks import project_off_basis, sink_basis

    m, direction, batch = emb
    d = direction.vector if "random" not in kind else random_like(direction.vector, seed=3)
    if kind.startswith("sink_projected"):
        d = project_off_basis(d, sink_basis(m)[0])
    diff, orth = _check_equivalence(m, d, batch)
    assert diff < EMBEDDED_TOL[kind], diff
    assert _real_max(orth.logits(batch), m.logits(batch), batch) > 1.0  # the edit matters
    # tied embeddings: untied, the unembedding keeps the original weights
    assert orth.hf_model.config.tie_word_embeddings is False
    assert torch.equal(orth.bridge.W_U, m.bridge.W_U)
    assert not torch.equal(orth.bridge.W_E, m.bridge.W_E)
    if kind in ("diff_in_means", "sink_projected"):
        out = export_hf(orth, tmp_path / "export")
        reloaded = AutoModelForCausalLM.from_pretrained(out)
        assert _real_max(_plain_logits(reloaded, batch), orth.logits(batch), batch) < 1e-5



def test_zero_or_overflowing_direction_is_refused_not_nan(synthetic):
    with pytest.raises(DirectionError, match="zero vector"):
        orthogonalize(synthetic, torch.zeros(synthetic.d_model))
    with pytest.raises(DirectionError, match="NaN or inf"):
        orthogonalize(synthetic, torch.full((synthetic.d_model,), float("inf")))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31), st.integers(-3, 19), st.sampled_from([torch.float32, torch.float64]))
def test_orthogonalized_weights_equal_hook_ablation_for_random_directions(syn, seed, exp, dtype):
    m, _, batch = syn
    vec = (torch.randn(m.d_model, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64) * 10.0 ** exp).to(dtype)
    diff, _ = _check_equivalence(m, vec, batch)
    assert diff < 1e-4
