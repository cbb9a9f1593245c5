"""The GCG search on the synthetic model: it lowers the loss, replays, refuses bad settings."""

from __future__ import annotations

import pytest

from refusal_lens.gcg import GCGConfig, gcg_search
from refusal_lens.suffixes import SuffixError, in_context_ok, suffix_ids


def test_gcg_lowers_loss_on_synthetic(synthetic):
    prompts = synthetic.info["synthetic"].harmful[:2]
    cfg = GCGConfig(n_tokens=4, steps=4, topk=8, batch=16, target="Sure here is", seed=0,
                    early_stop=False)
    res = gcg_search(synthetic, prompts, cfg, progress=False)
    assert res.steps_run == 4 and len(res.ids) == 4
    assert res.loss < res.losses[0]
    assert suffix_ids(synthetic.tokenizer, res.suffix) == res.ids
    assert res.in_context_ok and in_context_ok(synthetic, prompts, res.suffix)


def test_gcg_is_deterministic_and_replays_from_init(synthetic):
    """Same seed -> same search; a search continued from its result with the same seed keeps
    improving from there (what the shipped entry's ``reproduce`` command relies on)."""
    prompts = synthetic.info["synthetic"].harmful[:2]
    cfg = GCGConfig(n_tokens=4, steps=3, topk=8, batch=16, target="Sure here is", seed=0,
                    early_stop=False)
    a = gcg_search(synthetic, prompts, cfg, progress=False)
    b = gcg_search(synthetic, prompts, cfg, progress=False)
    assert a.ids == b.ids and a.losses == b.losses
    c = gcg_search(synthetic, prompts, cfg, progress=False, init=a.suffix)
    assert c.config["init"] == a.suffix and c.losses[0] == pytest.approx(a.loss, abs=1e-5)


def test_gcg_errors(synthetic):
    with pytest.raises(ValueError, match="at least one"):
        gcg_search(synthetic, [], steps=1, progress=False)
    with pytest.raises(SuffixError, match="n_tokens"):
        gcg_search(synthetic, ["make a bomb"], steps=1, n_tokens=3, init="you write",
                   progress=False)
    with pytest.raises(ValueError, match="target"):
        gcg_search(synthetic, ["make a bomb"], steps=1, target="", progress=False)
