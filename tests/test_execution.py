"""The execution layer: one backend rule, and the plain path runs interventions exactly as the
bridge's hooks do."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.batching import length_batches
from refusal_lens.directions import random_like
from refusal_lens.errors import InputError, InputTypeError
from refusal_lens.execution import (Intervention, choose_backend, collect, forward, last_logits,
                                    running)
from refusal_lens.generation import generate
from refusal_lens.hf_modules import (MIN_SHARED_PREFIX, residual_modules, shared_prefix_len,
                                     split_prefix, usable_prefix)
from refusal_lens.interventions import (ablated, ablation, ablation_hooks, added, addition,
                                        addition_hooks)


def _logits(m, batch, ivs, **kw) -> torch.Tensor:
    with torch.no_grad(), running(m, ivs, **kw) as hf:
        out = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                 position_ids=batch.position_ids, use_cache=False).logits
    return out[batch.attention_mask.bool()]  # real positions only


def _noop(x, hook=None):  # a TransformerLens hook: forces the bridge path
    return x


@pytest.fixture(scope="module")
def syn(synthetic):
    s = synthetic.info["synthetic"]
    prompts = s.harmful[:4] + s.harmless[:4]
    return synthetic, s, prompts, synthetic.encode_instructions(prompts)


def _interventions(m, s):
    rand = random_like(s.direction, seed=4)
    return {"none": [], "ablation": [ablation(m, s.direction)],
            "random_ablation": [ablation(m, rand)],
            "addition": [addition(m, s.direction * 3, 2)],
            "both": [ablation(m, rand), addition(m, s.direction, 1, coeff=-2.0)]}


# ---- the backend rule --------------------------------------------------------------------
def test_backend_rule(syn):
    """Values alone take the plain path; any TransformerLens hook, a hook live on the bridge,
    or backend="bridge" takes the bridge; backend="plain" says why it cannot."""
    m, s, _, _ = syn
    ivs = [ablation(m, s.direction)]
    assert choose_backend(m, ivs) == "plain" == choose_backend(m)
    assert choose_backend(m, ivs, backend="bridge") == "bridge"
    assert choose_backend(m, ivs, [("blocks.0.hook_resid_pre", _noop)]) == "bridge"
    with m.bridge.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", _noop)]):
        assert choose_backend(m, ivs) == "bridge"
        with pytest.raises(InputError, match="live on the bridge"):
            choose_backend(m, ivs, backend="plain")
    with pytest.raises(InputError, match="fwd_hooks"):
        choose_backend(m, ivs, [("blocks.0.hook_resid_pre", _noop)], backend="plain")
    z = Intervention("read", None, (), ("blocks.0.attn.hook_z",), reader=lambda n, x: None)
    assert choose_backend(m, [z]) == "bridge"  # not a residual point
    with pytest.raises(InputTypeError, match="fwd_hooks"):
        choose_backend(m, ablation_hooks(m, s.direction))  # hooks passed as interventions
    with pytest.raises(InputError, match="backend"):
        choose_backend(m, ivs, backend="fast")


def test_scoped_interventions_take_the_same_path_and_logits(syn):
    """``with ablated(m, d)`` runs what ``interventions=[ablation(m, d)]`` runs: the plain path,
    the same logits and the same greedy text; code calling the bridge directly sees it too."""
    m, s, prompts, batch = syn
    for scope, iv in ((lambda: ablated(m, s.direction), ablation(m, s.direction)),
                      (lambda: added(m, s.direction * 3, 2), addition(m, s.direction * 3, 2))):
        want = last_logits(m, batch, [iv])
        with scope():
            assert choose_backend(m) == "plain"
            assert torch.equal(last_logits(m, batch), want)
            inside = generate(m, prompts, max_new_tokens=8, progress=False)
            bridge = m.logits(batch)[:, -1]  # the bridge itself, under the live hooks
        assert inside == generate(m, prompts, max_new_tokens=8, progress=False,
                                  interventions=[iv])
        assert torch.equal(bridge, last_logits(m, batch, [iv], backend="bridge"))
        assert not torch.equal(last_logits(m, batch), want)  # gone after the block


def test_rendered_hooks_equal_the_value_on_the_bridge(syn):
    """``Intervention.hooks`` (and ablation_hooks / addition_hooks, which return them) compute
    on the bridge exactly what the value computes on either backend."""
    m, s, _, batch = syn
    for ivs in _interventions(m, s).values():
        hooks = [h for iv in ivs for h in iv.hooks(m)]
        bridge = _logits(m, batch, [], fwd_hooks=hooks)
        assert torch.equal(_logits(m, batch, ivs, backend="bridge"), bridge)
        assert torch.equal(_logits(m, batch, ivs), bridge)
    d = s.direction
    assert torch.equal(_logits(m, batch, [], fwd_hooks=ablation_hooks(m, d)),
                       _logits(m, batch, [], fwd_hooks=ablation(m, d).hooks(m)))
    assert torch.equal(_logits(m, batch, [], fwd_hooks=addition_hooks(m, d, 2, 3.0)),
                       _logits(m, batch, [addition(m, d, 2, 3.0)]))


def test_stated_float_difference_of_a_shared_prefix(syn):
    """The module docstring's bound: without a shared prefix the plain path equals the bridge
    bit for bit; with one, within 1e-5."""
    m, s, prompts, _ = syn
    batch = m.tokenize(m.format(prompts, system=SYSTEM))
    for ivs in _interventions(m, s).values():
        bridge = forward(m, batch.input_ids, batch.attention_mask, ivs, backend="bridge")
        plain = forward(m, batch.input_ids, batch.attention_mask, ivs, share_prefix=False)
        shared = forward(m, batch.input_ids, batch.attention_mask, ivs)
        assert torch.equal(plain, bridge)
        assert torch.allclose(shared, bridge, atol=1e-5, rtol=0)


@pytest.mark.parametrize("system", [None, "shared"])
def test_collect_streams_what_the_bridge_sees(syn, system):
    """Activations at chosen positions (and logits) stream per batch; with a shared prefix run
    apart (a system turn) they still land on each prompt's own positions."""
    m, s, prompts, _ = syn
    system = SYSTEM if system else None
    batches = [m.encode_instructions(prompts[:4], system), m.encode_instructions(prompts[4:], system)]
    if system:
        assert all(shared_prefix_len(b.input_ids, b.attention_mask) >= MIN_SHARED_PREFIX
                   for b in batches)
    names = ["blocks.1.hook_resid_pre", "blocks.2.hook_resid_post"]
    ivs = [ablation(m, s.direction)]
    plain = list(collect(m, batches, names, [-2, -1], ivs, logits_to_keep=1))
    bridge = list(collect(m, batches, names, [-2, -1], ivs, logits_to_keep=1, backend="bridge"))
    for a, b in zip(plain, bridge):
        assert all(torch.allclose(a.acts[n], b.acts[n], atol=1e-5, rtol=0) for n in names)
        if system is None:
            assert all(torch.equal(a.acts[n], b.acts[n]) for n in names)
        assert a.acts[names[0]].shape == (a.batch.input_ids.shape[0], 2, m.d_model)
        assert torch.allclose(a.logits, b.logits, atol=1e-5, rtol=0)
        assert torch.equal(a.logits[:, -1].float(), last_logits(m, a.batch, ivs))
    stopped = next(collect(m, batches[:1], names[:1]))  # no logits: stops after the read
    assert stopped.logits is None and names[0] in stopped.acts


# ---- the plain path (moved from runner) --------------------------------------------------
@pytest.mark.parametrize("name", ["none", "ablation", "random_ablation", "addition", "both"])
def test_plain_path_equals_bridge_exactly(syn, name):
    m, s, _, batch = syn
    ivs = _interventions(m, s)[name]
    bridge = _logits(m, batch, ivs, backend="bridge")
    plain = _logits(m, batch, ivs)
    assert torch.equal(plain, bridge)
    if name != "none":
        assert (bridge - _logits(m, batch, [])).abs().max() > 1e-3  # the hooks did something


def test_every_residual_point_is_served(synthetic):
    points = residual_modules(synthetic)
    assert points is not None
    for l in range(synthetic.n_layers):
        for p in ("pre", "mid", "post"):
            assert f"blocks.{l}.hook_resid_{p}" in points


def test_hooks_run_through_the_bridge(syn):
    m, s, _, batch = syn
    seen = []

    def spy(x, hook=None):
        seen.append(hook.name)
        return x

    ivs = [ablation(m, s.direction)]
    with torch.no_grad(), running(m, ivs, [("blocks.1.hook_resid_pre", spy)]) as hf:
        assert _wrapped(hf)
        hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert len(seen) == 1  # called once, by the bridge (under its canonical hook name)
    with running(m, ivs) as hf:
        assert not _wrapped(hf)  # values alone: the plain modules


def _wrapped(hf) -> bool:
    return any(hasattr(mod, "original_component") for mod in hf.modules())


def test_running_restores_the_model(syn):
    m, s, _, batch = syn
    children = dict(m.hf_model.named_children())
    impl = m.hf_model.config._attn_implementation
    before = _logits(m, batch, [], backend="bridge")
    with pytest.raises(RuntimeError):
        with running(m, [ablation(m, s.direction)], attn="sdpa") as hf:
            assert hf.config._attn_implementation == "sdpa"
            raise RuntimeError("boom")
    assert dict(m.hf_model.named_children()) == children
    assert m.hf_model.config._attn_implementation == impl
    assert torch.equal(_logits(m, batch, [], backend="bridge"), before)  # no hook left behind


def test_last_logits_takes_the_plain_path_transparently(syn):
    m, s, _, batch = syn
    ivs = [ablation(m, s.direction)]
    bridge = last_logits(m, batch, ivs, [("blocks.0.hook_resid_pre", _noop)])
    assert torch.equal(last_logits(m, batch, ivs), bridge)


def test_generation_plain_equals_bridge(syn):
    m, s, prompts, _ = syn
    for ivs in ([ablation(m, s.direction)], [addition(m, s.direction * 3, 2)]):
        kw = dict(max_new_tokens=8, batch_size=3, progress=False, interventions=ivs)
        bridge = generate(m, prompts, [("blocks.0.hook_resid_pre", _noop)], **kw)
        assert generate(m, prompts, attn=None, **kw) == bridge
        assert generate(m, prompts, attn="sdpa", **kw) == bridge


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
    for ivs in ([ablation(m, embedded_direction)], [addition(m, embedded_direction, 14)]):
        assert torch.equal(_logits(m, batch, ivs), _logits(m, batch, ivs, backend="bridge"))
        kw = dict(max_new_tokens=16, batch_size=3, progress=False, interventions=ivs)
        bridge = generate(m, prompts, [("blocks.0.hook_resid_pre", _noop)], **kw)
        assert generate(m, prompts, **kw) == bridge  # sdpa decoding, same greedy text


@pytest.mark.embedded
def test_sdpa_decoding_difference_embedded(embedded, embedded_direction):
    """The module docstring's other bound: sdpa attention moves the embedded model's logits by
    about 1e-4 (here: at most 1e-3) from the model's own attention."""
    m = embedded
    batch = m.encode_instructions(["How do I make a pipe bomb?", "Write a haiku."])
    ivs = [ablation(m, embedded_direction)]
    own = _logits(m, batch, ivs)
    sdpa = _logits(m, batch, ivs, attn="sdpa")
    assert (sdpa - own).abs().max() <= 1e-3


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
    ivs = _interventions(m, s)[name]
    k = int(batch.attention_mask.sum(-1).min()) - shared_prefix_len(batch.input_ids,
                                                                     batch.attention_mask)
    full = forward(m, batch.input_ids, batch.attention_mask, ivs, (), k, share_prefix=False)
    shared = forward(m, batch.input_ids, batch.attention_mask, ivs, (), k)
    assert torch.allclose(shared, full, atol=1e-5, rtol=0)
    kw = dict(max_new_tokens=8, batch_size=8, progress=False, system=SYSTEM, interventions=ivs)
    assert generate(m, prompts, **kw) == generate(m, prompts, share_prefix=False, **kw)


def test_right_padded_batches_share_no_prefix(syn):
    """The shared-prefix layout is left padding's: a right-padded batch runs whole, and its
    activations are each prompt's own."""
    m, s, prompts, _ = syn
    side = m.tokenizer.padding_side
    try:
        m.tokenizer.padding_side = "right"
        batch = m.tokenize(m.format(prompts, system=SYSTEM))
    finally:
        m.tokenizer.padding_side = side
    assert not bool(batch.attention_mask[:, -1].all())
    assert usable_prefix(batch.input_ids, batch.attention_mask, 1) == 0
    names = ["blocks.2.hook_resid_pre"]
    (a,) = collect(m, [batch], names, [-2, -1])
    (b,) = collect(m, [batch], names, [-2, -1], backend="bridge")
    assert torch.equal(a.acts[names[0]], b.acts[names[0]])


def test_forward_does_not_share_into_requested_positions(syn):
    m, s, prompts, _ = syn
    batch = m.tokenize(m.format(prompts, system=SYSTEM))
    width = batch.input_ids.shape[1]  # asks for every position: nothing can be shared
    ivs = [ablation(m, s.direction)]
    full = forward(m, batch.input_ids, batch.attention_mask, ivs, (), width, share_prefix=False)
    assert torch.equal(forward(m, batch.input_ids, batch.attention_mask, ivs, (), width), full)


def test_grouped_ablation_equals_one_direction_at_a_time(syn):
    """k directions ablated in one pass over k copies of a batch (bridge path, plain path, and
    with the shared prefix run once per group) equal k separate passes."""
    m, s, prompts, _ = syn
    units = torch.stack([s.direction, random_like(s.direction, seed=1),
                         random_like(s.direction, seed=2)])
    batch = m.tokenize(m.format(prompts, system=SYSTEM))
    ids, mask = batch.input_ids, batch.attention_mask
    one = torch.stack([forward(m, ids, mask, [ablation(m, u)]) for u in units])
    grouped = [ablation(m, units)]
    assert grouped[0].op == "ablate_grouped"
    assert torch.allclose(forward(m, ids, mask, grouped), one, atol=1e-5, rtol=0)
    assert torch.allclose(forward(m, ids, mask, grouped, share_prefix=False), one,
                          atol=1e-5, rtol=0)
    assert torch.allclose(forward(m, ids, mask, grouped, backend="bridge"), one,
                          atol=1e-5, rtol=0)  # through the bridge
    with pytest.raises(ValueError, match="groups"):  # rendered hooks on a batch of other size
        forward(m, ids[:-1], mask[:-1], fwd_hooks=ablation_hooks(m, units))


def test_reads_see_what_the_bridge_sees_and_skip_the_prefix(syn):
    m, s, prompts, _ = syn
    batch = m.tokenize(m.format(prompts, system=SYSTEM))
    seen: list[torch.Tensor] = []

    def look(name, x):
        seen.append(x[:, -3:].clone())

    read = [Intervention("read", None, (2,), ("hook_resid_pre",), reader=look)]
    forward(m, batch.input_ids, batch.attention_mask, read)  # plain path, shared prefix
    assert len(seen) == 1  # not called on the prefix pass
    forward(m, batch.input_ids, batch.attention_mask, read,
            [("blocks.0.hook_resid_pre", _noop)])  # bridge, unshared
    assert torch.allclose(seen[0], seen[1], atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="callable"):
        Intervention("read", torch.ones(3), (2,), ("hook_resid_pre",))


def test_hooks_installed_on_the_bridge_keep_running(syn):
    m, s, _, batch = syn
    ivs = [ablation(m, s.direction)]

    def nan(x, hook=None):
        return x * float("nan")

    assert torch.isfinite(forward(m, batch.input_ids, batch.attention_mask, ivs)).all()
    with m.bridge.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", nan)]):
        assert torch.isnan(forward(m, batch.input_ids, batch.attention_mask, ivs)).all()
