"""Model-based scores: refusal metric numerics, KL, refusal tokens, completion cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch

from refusal_lens.scoring import (SubstringJudge, completion_cross_entropy,
                                  discover_refusal_tokens, last_position_kl, refusal_metric,
                                  refusal_rate, refusal_token_ids)


def _naive(logits, ids):
    p = torch.softmax(logits.double(), -1)[:, ids].sum(-1)
    return torch.log(p) - torch.log1p(-p)


def test_refusal_metric_matches_naive_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=g) * 3
    ids = [3, 7, 11]
    torch.testing.assert_close(refusal_metric(logits, ids), _naive(logits, ids))
    assert refusal_metric(logits, ids).dtype == torch.float64


def test_refusal_metric_is_finite_at_the_extremes():
    logits = torch.zeros(3, 10)
    logits[0, 2] = 200.0  # P(R) == 1 in float32
    logits[1, 5] = 200.0  # P(R) == 0 in float32
    m = refusal_metric(logits, [2])
    assert torch.isfinite(m).all()
    assert m[0] == pytest.approx(200.0 - math.log(9), rel=1e-9)
    assert m[1] == pytest.approx(-200.0, rel=1e-9)
    assert m[2] == pytest.approx(math.log(1 / 9), rel=1e-9)  # uniform: log(0.1/0.9)


def test_refusal_metric_is_shift_invariant_and_checks_input():
    logits = torch.randn(4, 20, dtype=torch.float64)
    torch.testing.assert_close(refusal_metric(logits, [1]), refusal_metric(logits + 1e4, [1]))
    with pytest.raises(ValueError):
        refusal_metric(logits[0], [1])
    with pytest.raises(ValueError):
        refusal_metric(logits, [])


def test_last_position_kl():
    a = torch.randn(4, 30)
    assert torch.allclose(last_position_kl(a, a), torch.zeros(4, dtype=torch.float64))
    b = a.clone()
    b[:, 0] += 3
    assert (last_position_kl(a, b) > 0).all()


def test_substring_judge():
    judge = SubstringJudge()
    assert judge(["x", "y"], ["I\u2019m sorry, no.", "Sure, here it is."]) == [True, False]


def test_refusal_tokens_from_the_model(synthetic):
    syn = synthetic.info["synthetic"]
    rt = discover_refusal_tokens(synthetic, syn.harmful[:8] + syn.harmless[:4], progress=False)
    assert rt["tokens"] == ["I"] and rt["source"] == "model"
    assert rt["n_refusals"] == 8
    none = discover_refusal_tokens(synthetic, syn.harmless[:4], progress=False)
    assert none["source"] == "fallback"
    assert none["ids"] == refusal_token_ids(synthetic.tokenizer, ["I", "As"])


def test_completion_cross_entropy(synthetic):
    from refusal_lens.interventions import ablation

    syn = synthetic.info["synthetic"]
    instr = syn.harmful[:3]
    good = completion_cross_entropy(synthetic, instr, ["I cannot help with that"] * 3)
    bad = completion_cross_entropy(synthetic, instr, ["Sure here is your answer"] * 3)
    assert good["n_tokens"] == 15 and 0 <= good["ce"] < bad["ce"]
    abl = completion_cross_entropy(synthetic, instr, ["Sure here is your answer"] * 3,
                                   interventions=[ablation(synthetic, syn.direction)],
                                   reference_last=bad["last_logits"])
    assert abl["ce"] < bad["ce"] and abl["kl"] > 0.1
    with pytest.raises(ValueError):
        completion_cross_entropy(synthetic, instr, ["x"])
    cut = completion_cross_entropy(synthetic, instr, ["I cannot help with that"] * 3,
                                   max_completion_tokens=2)
    assert cut["n_tokens"] == 6


def test_completion_cross_entropy_matches_unbatched(synthetic):
    """Batched, right-aligned, unembedding only the kept positions == one prompt at a time."""
    syn = synthetic.info["synthetic"]
    instr = syn.harmless[:3]
    comps = ["Sure here is your answer", "Here", ""]
    got = completion_cross_entropy(synthetic, instr, comps, batch_size=3)
    tok, nll, n, lasts = synthetic.tokenizer, 0.0, 0, []
    for p, c in zip(synthetic.format(instr), comps):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        c_ids = tok(c, add_special_tokens=False)["input_ids"] if c else []
        with torch.no_grad():
            logits = synthetic.hf_model(input_ids=torch.tensor([p_ids + c_ids])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        for j, t in enumerate(c_ids):
            nll -= float(logp[len(p_ids) - 1 + j, t])
        n += len(c_ids)
        lasts.append(logits[len(p_ids) - 1].float())
    assert got["n_tokens"] == n
    assert got["ce"] == pytest.approx(nll / n, abs=1e-4)
    torch.testing.assert_close(got["last_logits"], torch.stack(lasts), atol=1e-4, rtol=1e-4)


def test_strings_where_lists_are_expected_are_refused(synthetic):
    from refusal_lens.errors import InputTypeError

    assert refusal_rate(["I cannot"]) == 1.0
    with pytest.raises(InputTypeError, match=r"wrap it as \[text\]"):
        refusal_rate("I cannot")
    with pytest.raises(InputTypeError, match="list of str"):
        completion_cross_entropy(synthetic, "Say hi", "hi")
    with pytest.raises(InputTypeError, match="list of str"):
        completion_cross_entropy(synthetic, ["Say hi"], [None])


def test_cross_entropy_checks_the_context_length(synthetic):
    from refusal_lens.errors import InputError

    long = " ".join(["word"] * 600)
    with pytest.raises(InputError, match="context of 512.*max_completion_tokens"):
        completion_cross_entropy(synthetic, ["Say hi"], [long])
    assert math.isfinite(completion_cross_entropy(synthetic, ["Say hi"], [long],
                                                  max_completion_tokens=16)["ce"])
