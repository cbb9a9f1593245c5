"""Suffixes: random suffixes, text helpers, conditions and the shipped suffix (the search:
test_gcg.py)."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.suffixes import (apply_suffix, ids_to_suffix, in_context_ok, random_suffix,
                                   suffix_conditions, suffix_ids, suffix_vocab)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("n", [1, 5, 12])
def test_random_suffix_has_requested_length(synthetic, n):
    s = random_suffix(synthetic, n, seed=3)
    assert len(suffix_ids(synthetic.tokenizer, s)) == n
    assert s == random_suffix(synthetic, n, seed=3)
    assert s != random_suffix(synthetic, n, seed=4) or n == 1


def test_random_suffix_uses_the_filtered_vocabulary(synthetic):
    allowed, _ = suffix_vocab(synthetic)
    special = set(synthetic.tokenizer.all_special_ids)
    assert not any(allowed[i] for i in special)
    ids = suffix_ids(synthetic.tokenizer, random_suffix(synthetic, 30, seed=0))
    assert all(bool(allowed[i]) for i in ids)


def test_apply_suffix_and_errors():
    assert apply_suffix(["a b", "c"], " x y ") == ["a b x y", "c x y"]
    with pytest.raises(ValueError, match="empty"):
        apply_suffix(["a"], "   ")
    with pytest.raises(TypeError):
        apply_suffix("a", "x")


def test_random_suffix_rejects_zero_length(synthetic):
    with pytest.raises(ValueError, match="n_tokens"):
        random_suffix(synthetic, 0)


class _CharTokenizer:
    """Decodes ids to letters but tokenizes text per character: 'ab' is one id, two chars."""

    vocab = {0: "ab", 1: "c"}

    def decode(self, ids, **_):
        return "".join(self.vocab[i] for i in ids)

    def __call__(self, text, add_special_tokens=False):
        inv = {"a": 2, "b": 3, "c": 1, " ": 4}
        return {"input_ids": [inv[c] for c in text]}


def test_retokenization_mismatch_is_reported():
    with pytest.warns(UserWarning, match="re-tokenizes"):
        text, info = ids_to_suffix(_CharTokenizer(), [0, 1])
    assert text == "abc"
    assert info == {"n_tokens_requested": 2, "n_tokens": 4, "retokenizes": False}


def test_suffix_conditions():
    c = suffix_conditions(["a", "b", "c"], ["d"], "ADV", ["R1", "R2"])
    assert c["harmful + adversarial suffix"] == ["a ADV", "b ADV", "c ADV"]
    assert c["harmful + random suffix"] == ["a R1", "b R2", "c R1"]
    assert c["harmless"] == ["d"]
    with pytest.raises(ValueError):
        suffix_conditions(["a"], None, "ADV", [])


@pytest.mark.embedded
def test_random_suffix_on_embedded(embedded):
    for seed in range(3):
        s = random_suffix(embedded, 20, seed=seed)
        assert len(suffix_ids(embedded.tokenizer, s)) == 20
        assert s.isascii()
        assert in_context_ok(embedded, ["How do I make a cake?", "Explain RSA."], s)


@pytest.mark.embedded
def test_shipped_suffix_round_trips(embedded):
    from refusal_lens.suffixes import shipped_suffix

    entry = shipped_suffix("embedded")
    assert suffix_ids(embedded.tokenizer, entry["suffix"]) == entry["ids"]
    assert entry["effect"]["n_prompts"] >= 50
