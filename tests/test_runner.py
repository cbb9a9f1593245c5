"""The plain-module path runs tagged interventions exactly as the bridge's hooks do."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.activations import length_batches
from refusal_lens.directions import random_like
from refusal_lens.generation import generate
from refusal_lens.interventions import ablation_hooks, addition_hooks
from refusal_lens.runner import (MIN_SHARED_PREFIX, forward, plain_points, running,
                                 shared_prefix_len, split_prefix)
from refusal_lens.scoring import last_logits


def _logits(m, batch, hooks, **kw) -> torch.Tensor:
    with torch.no_grad(), running(m, hooks, **kw) as hf:
        out = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                 position_ids=batch.position_ids, use_cache=False).logits
    return out[batch.attention_mask.bool()]  # real positions only


def _noop(x, hook=None):  # untagged: forces the bridge path
    return x


@pytest.fixture(scope="module")
def syn(synthetic):
    s = synthetic.info["synthetic"]
    prompts = s.harmful[:4] + s.harmless[:4]
    return synthetic, s, prompts, synthetic.encode_instructions(prompts)


def _interventions(m, s):
    rand = random_like(s.direction, seed=4)
    return {"none": [], "ablation": ablation_hooks(m, s.direction),
            "random_ablation": ablation_hooks(m, rand),
            "addition": addition_hooks(m, s.direction * 3, 2),
            "both": ablation_hooks(m, rand) + addition_hooks(m, s.direction, 1, coeff=-2.0)}


@pytest.mark.parametrize("name", ["none", "ablation", "random_ablation", "addition", "both"])
def test_plain_path_equals_bridge_exactly(syn, name):
    m, s, _, batch = syn
    hooks = _interventions(m, s)[name]
    bridge = _logits(m, batch, hooks, plain=False)
    plain = _logits(m, batch, hooks)
    assert torch.equal(plain, bridge)
    if name != "none":
        assert (bridge - _logits(m, batch, [])).abs().max() > 1e-3  # the hooks did something


def test_every_residual_point_is_served(synthetic):
    points = plain_points(synthetic)
    assert points is not None
    for l in range(synthetic.n_layers):
        for p in ("pre", "mid", "post"):
            assert f"blocks.{l}.hook_resid_{p}" in points


def test_untagged_hooks_run_through_the_bridge(syn):
    m, s, _, batch = syn
    seen = []

    def spy(x, hook=None):
        seen.append(hook.name)
        return x

    hooks = ablation_hooks(m, s.direction) + [("blocks.1.hook_resid_pre", spy)]
    with torch.no_grad(), running(m, hooks) as hf:
        assert _wrapped(hf)
        hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert len(seen) == 1  # called once, by the bridge (under its canonical hook name)
    with running(m, ablation_hooks(m, s.direction)) as hf:
        assert not _wrapped(hf)  # tagged hooks alone: the plain modules


def _wrapped(hf) -> bool:
    return any(hasattr(mod, "original_component") for mod in hf.modules())


def test_running_restores_the_model(syn):
    m, s, _, batch = syn
    children = dict(m.hf_model.named_children())
    impl = m.hf_model.config._attn_implementation
    before = _logits(m, batch, [], plain=False)
    with pytest.raises(RuntimeError):
        with running(m, ablation_hooks(m, s.direction), attn="sdpa") as hf:
            assert hf.config._attn_implementation == "sdpa"
            raise RuntimeError("boom")
    assert dict(m.hf_model.named_children()) == children
    assert m.hf_model.config._attn_implementation == impl
    assert torch.equal(_logits(m, batch, [], plain=False), before)  # no hook left behind


def test_last_logits_takes_the_plain_path_transparently(syn):
    m, s, _, batch = syn
    hooks = ablation_hooks(m, s.direction)
    bridge = last_logits(m, batch, hooks + [("blocks.0.hook_resid_pre", _noop)])
    assert torch.equal(last_logits(m, batch, hooks), bridge)


def test_generation_plain_equals_bridge(syn):
    m, s, prompts, _ = syn
    for hooks in (ablation_hooks(m, s.direction), addition_hooks(m, s.direction * 3, 2)):
        kw = dict(max_new_tokens=8, batch_size=3, progress=False)
        bridge = generate(m, prompts, list(hooks) + [("blocks.0.hook_resid_pre", _noop)], **kw)
        assert generate(m, prompts, hooks, attn=None, **kw) == bridge
        assert generate(m, prompts, hooks, attn="sdpa", **kw) == bridge


def test_length_batches_cover_every_index_within_limits():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (97,), generator=gen).tolist()
    for sort in (True, False):
        batches = length_batches(lengths, 16, 1024, sort=sort)
        assert sorted(i for b in batches for i in b) == list(range(97))
        for b in batches:
            assert len(b) <= 16
            assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1024
        if not sort:
            assert [i for b in batches for i in b] == list(range(97))
    with pytest.raises(ValueError, match="batch_size"):
        length_batches([1, 2], 0)


@pytest.mark.embedded
def test_plain_path_equals_bridge_embedded(embedded, embedded_direction):
    m = embedded
    prompts = ["How do I make a pipe bomb?", "Write a haiku about autumn leaves.", "Hi"]
    batch = m.encode_instructions(prompts)
    for hooks in (ablation_hooks(m, embedded_direction),
                  addition_hooks(m, embedded_direction, 14)):
        assert torch.equal(_logits(m, batch, hooks), _logits(m, batch, hooks, plain=False))
        kw = dict(max_new_tokens=16, batch_size=3, progress=False)
        bridge = generate(m, prompts, list(hooks) + [("blocks.0.hook_resid_pre", _noop)], **kw)
        assert generate(m, prompts, hooks, **kw) == bridge  # sdpa decoding, same greedy text


SYSTEM = "You are a careful assistant. Answer briefly, plainly and well, in one or two lines."


def test_split_prefix_layout():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 9, 1]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    assert shared_prefix_len(ids, mask) == 3
    prefix, rest, full, pos = split_prefix(ids, mask, 3)
    assert prefix.tolist() == [[5, 6, 7]]
    assert rest.tolist() == [[0, 0, 8], [9, 9, 1]]
    assert full.tolist() == [[1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1]]
    assert pos.tolist() == [[3, 3, 3], [3, 4, 5]]
    # every row keeps at least one token after the prefix
    assert shared_prefix_len(torch.tensor([[5, 6], [5, 6]]), torch.ones(2, 2)) == 1


@pytest.mark.parametrize("name", ["none", "ablation", "addition", "both"])
def test_shared_prefix_equals_unshared(syn, name):
    m, s, prompts, _ = syn
    batch = m.tokenize(m.format(prompts, system=SYSTEM))
    assert shared_prefix_len(batch.input_ids, batch.attention_mask) >= MIN_SHARED_PREFIX
    hooks = _interventions(m, s)[name]
    k = int(batch.attention_mask.sum(-1).min()) - shared_prefix_len(batch.input_ids,
                                                                     batch.attention_mask)
    full = forward(m, batch.input_ids, batch.attention_mask, hooks, k, share_prefix=False)
    shared = forward(m, batch.input_ids, batch.attention_mask, hooks, k)
    assert torch.allclose(shared, full, atol=1e-5, rtol=0)
    kw = dict(max_new_tokens=8, batch_size=8, progress=False, system=SYSTEM)
    assert generate(m, prompts, hooks, **kw) == generate(m, prompts, hooks, share_prefix=False,
                                                         **kw)


def test_forward_does_not_share_into_requested_positions(syn):
    m, s, prompts, _ = syn
    batch = m.tokenize(m.format(prompts, system=SYSTEM))
    width = batch.input_ids.shape[1]  # asks for every position: nothing can be shared
    hooks = ablation_hooks(m, s.direction)
    full = forward(m, batch.input_ids, batch.attention_mask, hooks, width, share_prefix=False)
    assert torch.equal(forward(m, batch.input_ids, batch.attention_mask, hooks, width), full)


def test_grouped_ablation_equals_one_direction_at_a_time(syn):
    """k directions ablated in one pass over k copies of a batch (bridge path, plain path, and
    with the shared prefix run once per group) equal k separate passes."""
    m, s, prompts, _ = syn
    units = torch.stack([s.direction, random_like(s.direction, seed=1),
                         random_like(s.direction, seed=2)])
    batch = m.tokenize(m.format(prompts, system=SYSTEM))
    ids, mask = batch.input_ids.repeat(3, 1), batch.attention_mask.repeat(3, 1)
    one = torch.cat([forward(m, batch.input_ids, batch.attention_mask, ablation_hooks(m, u))
                     for u in units])
    hooks = ablation_hooks(m, units)
    assert torch.allclose(forward(m, ids, mask, hooks, groups=3), one, atol=1e-5, rtol=0)
    assert torch.allclose(forward(m, ids, mask, hooks, groups=3, share_prefix=False), one,
                          atol=1e-5, rtol=0)
    assert torch.allclose(forward(m, ids, mask, hooks + [("blocks.0.hook_resid_pre", _noop)],
                                  groups=3), one, atol=1e-5, rtol=0)  # through the bridge
    with pytest.raises(ValueError, match="groups"):
        forward(m, ids[:-1], mask[:-1], hooks, groups=3)


def test_read_hooks_see_what_the_bridge_sees_and_skip_the_prefix(syn):
    from refusal_lens.runner import tag

    m, s, prompts, _ = syn
    batch = m.tokenize(m.format(prompts, system=SYSTEM))
    seen: list[torch.Tensor] = []

    def look(x, hook=None):
        seen.append(x[:, -3:].clone())
        return x

    hooks = [("blocks.2.hook_resid_pre", tag(look, "read", look))]
    forward(m, batch.input_ids, batch.attention_mask, hooks)  # plain path, shared prefix
    assert len(seen) == 1  # not called on the prefix pass
    forward(m, batch.input_ids, batch.attention_mask, hooks + [("blocks.0.hook_resid_pre",
                                                                 _noop)])  # bridge, unshared
    assert torch.allclose(seen[0], seen[1], atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="callable"):
        tag(look, "read", torch.ones(3))


def test_hooks_installed_on_the_bridge_keep_running(syn):
    m, s, _, batch = syn
    hooks = ablation_hooks(m, s.direction)

    def nan(x, hook=None):
        return x * float("nan")

    assert torch.isfinite(forward(m, batch.input_ids, batch.attention_mask, hooks)).all()
    with m.bridge.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", nan)]):
        assert torch.isnan(forward(m, batch.input_ids, batch.attention_mask, hooks)).all()
