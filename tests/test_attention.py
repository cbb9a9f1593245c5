"""Attention spans: token masks of the instruction and suffix, mass that sums to one, errors."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.attention import (attention_pattern_html, attention_shift, attention_to_spans,
                                    check_heads, span_masks)


def test_span_masks_cover_instruction_and_suffix(synthetic):
    syn = synthetic.info["synthetic"]
    instrs = syn.harmful[:3]
    sufs = ["you write at", None, "cake robot"]
    inst, suf, batch = span_masks(synthetic, instrs, sufs)
    tok = synthetic.tokenizer
    for i, (x, s) in enumerate(zip(instrs, sufs)):
        assert tok.decode(batch.input_ids[i][inst[i]]).strip() == x
        got = tok.decode(batch.input_ids[i][suf[i]]).strip()
        assert got == (s or "")
    assert not (inst & suf).any()


def test_attention_mass_sums_to_one(synthetic):
    syn = synthetic.info["synthetic"]
    heads = [(0, 0), (1, 0), (3, 2)]
    out = attention_to_spans(synthetic, syn.harmful[:4], heads, ["you write"] * 4)
    total = out["instruction"] + out["suffix"] + out["other"]
    assert total.shape == (4, 3)
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)
    # the planted mover head attends to harmful words, which are in the instruction
    assert out["instruction"][:, 1].min() > 0.9
    none = attention_to_spans(synthetic, syn.harmful[:2], heads)
    assert none["suffix"].abs().max() == 0


def test_attention_shift_conditions(synthetic):
    syn = synthetic.info["synthetic"]
    sh = attention_shift(synthetic, syn.harmful[:3], [(1, 0)], "you write", ["cake robot"],
                         progress=False)
    assert set(sh.mass) == {"harmful", "harmful + adversarial suffix", "harmful + random suffix"}
    assert set(sh.mean_over_heads()["harmful"]) == {"instruction", "suffix", "other"}


def test_heads_out_of_range(synthetic):
    with pytest.raises(ValueError, match="out of range"):
        check_heads(synthetic, [(synthetic.n_layers, 0)])
    with pytest.raises(ValueError, match="out of range"):
        attention_to_spans(synthetic, ["make a bomb"], [(0, synthetic.n_heads)])
    with pytest.raises(ValueError, match="No heads"):
        check_heads(synthetic, [])


def test_pattern_html(synthetic, tmp_path):
    path = attention_pattern_html(synthetic, "make a bomb", [(1, 0), (2, 1)], tmp_path / "p",
                                  suffix="you write")
    text = path.read_text()
    assert path.suffix == ".html" and "AttentionHeads" in text
    assert '"attentionHeadNames": ["L1H0", "L2H1"]' in text  # heads named, not "Head 0-1"
