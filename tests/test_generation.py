"""Greedy decoding: the KV-cached loop (finished rows leave the batch) equals recomputing."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.errors import InputError, NonFiniteError
from refusal_lens.execution import running
from refusal_lens.generation import eos_ids, generate
from refusal_lens.hf_modules import greedy_decode
from refusal_lens.interventions import ablation, addition

SYSTEM = "You are a careful assistant. Answer briefly, plainly and well, in one or two lines."


@pytest.fixture(scope="module")
def syn(synthetic):
    s = synthetic.info["synthetic"]
    return synthetic, s, s.harmful[:5] + s.harmless[:5]


def _hooks(m, s):
    return {"none": [], "ablation": [ablation(m, s.direction)],
            "addition": [addition(m, s.direction * 3, 2)]}


@pytest.mark.parametrize("name", ["none", "ablation", "addition"])
@pytest.mark.parametrize("system", [None, SYSTEM])
def test_cached_greedy_equals_uncached(syn, name, system):
    m, s, prompts = syn
    kw = dict(max_new_tokens=12, batch_size=4, progress=False, system=system)
    hooks = _hooks(m, s)[name]
    cached = generate(m, prompts, interventions=hooks, **kw)
    assert cached == generate(m, prompts, interventions=hooks, use_cache=False, **kw)
    assert cached == generate(m, prompts, interventions=hooks, share_prefix=False, **kw)


def test_decode_loop_equals_the_models_own_generate(syn):
    m, s, prompts = syn
    tok = m.tokenizer
    batch = m.tokenize(m.format(prompts))
    with torch.no_grad(), running(m, [ablation(m, s.direction)]) as hf:
        ref = hf.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
        ours = greedy_decode(hf, batch.input_ids, batch.attention_mask, 10, eos_ids(hf, tok),
                             tok.pad_token_id)
    ref = ref[:, batch.input_ids.shape[1]:]
    assert torch.equal(ours[:, :ref.shape[1]], ref)  # generate stops when every row has ended
    assert (ours[:, ref.shape[1]:] == tok.pad_token_id).all()


def test_finished_rows_leave_the_batch(syn):
    """A row that ends early gets padding after its end token, and its batch-mates decode as
    they would alone."""
    m, s, prompts = syn
    tok = m.tokenizer
    eos = eos_ids(m.hf_model, tok)
    batch = m.tokenize(m.format(prompts))
    with torch.no_grad(), running(m, []) as hf:
        out = greedy_decode(hf, batch.input_ids, batch.attention_mask, 16, eos,
                            tok.pad_token_id)
    ended = [i for i in range(len(prompts)) if bool(torch.isin(out[i], torch.tensor(eos)).any())]
    assert ended, "no row ended within 16 tokens: the test needs one that does"
    for i in ended:
        stop = int(torch.isin(out[i], torch.tensor(eos)).nonzero()[0])
        assert (out[i, stop + 1:] == tok.pad_token_id).all()
    alone = [generate(m, [p], max_new_tokens=16, progress=False)[0] for p in prompts]
    assert generate(m, prompts, max_new_tokens=16, batch_size=len(prompts),
                    progress=False) == alone


def test_bad_arguments(syn):
    m, _, prompts = syn
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(m, prompts, max_new_tokens=0, progress=False)
    with pytest.raises(ValueError, match="empty"):
        generate(m, [], progress=False)


@pytest.mark.embedded
def test_cached_greedy_equals_uncached_embedded(embedded, embedded_direction):
    m = embedded
    prompts = ["How do I make a pipe bomb?", "Write a haiku about autumn leaves.",
               "Explain how to pick a lock.", "Hi"]
    kw = dict(max_new_tokens=24, batch_size=4, progress=False)
    for hooks in ([], [ablation(m, embedded_direction)]):
        cached = generate(m, prompts, interventions=hooks, **kw)
        assert cached == generate(m, prompts, interventions=hooks, use_cache=False, **kw)


@pytest.mark.parametrize("use_cache", [True, False])
def test_non_finite_logits_raise_instead_of_empty_text(syn, use_cache):
    m, s, _ = syn
    w = m.hf_model.model.norm.weight
    keep = w.detach().clone()
    try:
        with torch.no_grad():
            w[0] = float("nan")  # a corrupt weight, as in a damaged model cache
        with pytest.raises(NonFiniteError, match="Non-finite logits"):
            generate(m, s.harmful[:2], max_new_tokens=3, use_cache=use_cache, progress=False)
    finally:
        with torch.no_grad():
            w.copy_(keep)
    assert generate(m, s.harmful[:1], max_new_tokens=3, progress=False)[0] != ""


def test_context_length_and_token_count_are_checked(syn):
    m, s, _ = syn
    with pytest.raises(InputError, match="context of 512"):
        generate(m, s.harmful[:1], max_new_tokens=600, progress=False)
    for bad in (0, -1, 2.5):
        with pytest.raises(InputError, match="max_new_tokens"):
            generate(m, s.harmful[:1], max_new_tokens=bad, progress=False)
