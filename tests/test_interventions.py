"""Hook interventions: directional ablation and activation addition behave as algebra says."""

from __future__ import annotations

import pytest
import torch

from refusal_lens.activations import resid_hook_name
from refusal_lens.directions import Direction, DirectionError, random_like
from refusal_lens.errors import InputError, InputTypeError, NonFiniteError
from refusal_lens.interventions import (
    ablated,
    ablation_hooks,
    added,
    addition_hooks,
    hooked,
    project_out,
)

EMBEDDED_PROMPTS = ["How do I make a pipe bomb?", "Write a haiku about autumn leaves.",
                    "Explain how to pick a lock.", "Hi"]



def _real_max(a: torch.Tensor, b: torch.Tensor, batch) -> float:
    """Max |a - b| over real (non-padding) token positions."""
    return (a - b)[batch.attention_mask.bool()].abs().max().item()


@pytest.fixture(scope="module")
def syn(synthetic):
    s = synthetic.info["synthetic"]
    prompts = s.harmful[:5] + s.harmless[:5]
    return synthetic, s, prompts, synthetic.encode_instructions(prompts)


@pytest.fixture(scope="module")
def embedded_setup(embedded_base, embedded_direction):
    return embedded_base, embedded_direction, EMBEDDED_PROMPTS


def test_project_out():
    u = torch.tensor([0.6, 0.8])
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    y = project_out(x, u)
    assert torch.allclose(y @ u, torch.zeros(2), atol=1e-6)
    assert torch.allclose(project_out(y, u), y)


def test_ablation_changes_refusal_logits(syn):
    m, s, _, batch = syn
    base = m.logits(batch)
    with ablated(m, s.direction):
        abl = m.logits(batch)
    assert _real_max(abl, base, batch) > 1.0  # the planted direction matters
    assert torch.equal(m.logits(batch), base)  # hooks are gone after the block


def test_ablating_twice_equals_once(syn):
    m, s, _, batch = syn
    for d in (s.direction, random_like(s.direction, seed=1)):
        once = m.logits(batch, ablation_hooks(m, d))
        twice = m.logits(batch, ablation_hooks(m, d) + ablation_hooks(m, d))
        assert _real_max(once, twice, batch) < 1e-5


def test_addition_with_zero_coefficient_is_exact_noop(syn):
    m, s, _, batch = syn
    base = m.logits(batch)
    for layer in (0, m.n_layers - 1):
        assert torch.equal(m.logits(batch, addition_hooks(m, s.direction * 3, layer, 0.0)), base)


def test_add_then_subtract_is_noop(syn):
    m, s, _, batch = syn
    base = m.logits(batch)
    r = s.direction * 4.0
    for layer in range(m.n_layers):
        hooks = addition_hooks(m, r, layer, 1.0) + addition_hooks(m, r, layer, -1.0)
        assert _real_max(m.logits(batch, hooks), base, batch) < 1e-4
    with added(m, r, 2):
        moved = m.logits(batch)
    assert _real_max(moved, base, batch) > 1.0


def _resid_names(m) -> list[str]:
    return [resid_hook_name(l, h) for l in range(m.n_layers)
            for h in ("resid_pre", "resid_mid", "resid_post")]


def _check_component_removed(m, direction, prompts, planted: bool):
    unit = direction / direction.norm()
    names = _resid_names(m)
    batch = m.encode_instructions(prompts)
    real = batch.attention_mask.bool()
    _, before = m.run_with_cache(prompts, names)
    with ablated(m, direction):
        _, after = m.run_with_cache(prompts, names)
    for name in names:
        proj = after[name].double() @ unit.double().to(after[name].device)
        scale = after[name][real].norm(dim=-1).max().item()
        assert proj[real].abs().max().item() < 1e-5 * max(1.0, scale), name
    if planted:  # without ablation the direction is strongly present after the planted layer
        last = before[resid_hook_name(m.n_layers - 1)][:, -1].double() @ unit.double()
        assert last.abs().max().item() > 1.0


def test_ablation_removes_component_synthetic(syn):
    m, s, prompts, _ = syn
    _check_component_removed(m, s.direction, prompts, planted=True)
    _check_component_removed(m, random_like(s.direction, seed=2), prompts, planted=False)


def test_direction_objects_and_errors(syn):
    m, s, _, batch = syn
    d = Direction(s.direction * 2, layer=2, position=-1, model="synthetic")
    assert torch.equal(m.logits(batch, ablation_hooks(m, d)),
                       m.logits(batch, ablation_hooks(m, s.direction)))
    hooks = ablation_hooks(m, d, layers=[1])
    assert [n for n, _ in hooks] == [f"blocks.1.hook_{p}" for p in ("resid_pre", "resid_mid",
                                                                    "resid_post")]
    with pytest.raises(DirectionError, match="width 3"):
        ablation_hooks(m, torch.ones(3))
    with pytest.raises(DirectionError, match="width 576"):
        addition_hooks(m, Direction(torch.ones(576), 0, -1), 0)
    with pytest.raises(DirectionError, match="zero"):
        ablation_hooks(m, torch.zeros(m.d_model))
    with pytest.raises(DirectionError, match="NaN"):
        ablation_hooks(m, torch.full((m.d_model,), float("nan")))
    with pytest.raises(ValueError, match="out of range"):
        addition_hooks(m, s.direction, m.n_layers)
    with hooked(m, ablation_hooks(m, d)) as same:
        assert same is m


@pytest.mark.embedded
def test_ablation_removes_component_embedded(embedded_setup):
    m, d, prompts = embedded_setup
    _check_component_removed(m, d.vector, prompts, planted=False)


@pytest.mark.embedded
def test_ablate_twice_and_add_subtract_embedded(embedded_setup):
    m, d, prompts = embedded_setup
    batch = m.encode_instructions(prompts)
    once = m.logits(batch, ablation_hooks(m, d))
    twice = m.logits(batch, ablation_hooks(m, d) + ablation_hooks(m, d))
    assert _real_max(once, twice, batch) < 1e-4
    base = m.logits(batch)
    assert torch.equal(m.logits(batch, addition_hooks(m, d, 14, 0.0)), base)
    back = m.logits(batch, addition_hooks(m, d, 14, 1.0) + addition_hooks(m, d, 14, -1.0))
    assert _real_max(back, base, batch) < 1e-3


# ---- bad input: clear errors, or the right result, never a silent no-op ------------------


@pytest.mark.parametrize("layers", [[99], [-1], [], [1.0]])
def test_ablation_layers_out_of_range_are_refused(syn, layers):
    m, s, _, _ = syn
    with pytest.raises(InputError, match="out of range|empty"):
        ablation_hooks(m, s.direction, layers=layers)


def test_unknown_hook_points_are_refused(syn):
    m, s, _, _ = syn
    with pytest.raises(InputError, match="Unknown hook points"):
        ablation_hooks(m, s.direction, points=["hook_resid_typo"])
    with pytest.raises(InputError, match="list of hook points"):
        ablation_hooks(m, s.direction, points="hook_resid_pre")


def test_direction_overflowing_float32_norm_still_ablates(syn):
    m, s, _, batch = syn
    big = (s.direction / s.direction.abs().max() * 1e19).float()  # entries ~1e19
    assert not torch.isfinite(big.norm())  # the float32 norm overflows
    ablated_big = m.logits(batch, ablation_hooks(m, big))
    ablated = m.logits(batch, ablation_hooks(m, s.direction))
    assert _real_max(ablated_big, ablated, batch) < 1e-4
    assert _real_max(ablated_big, m.logits(batch), batch) > 1e-2  # not a no-op


def test_addition_coefficient_and_overflow_are_checked(syn):
    m, s, _, _ = syn
    for coeff in (float("nan"), float("inf"), "1"):
        with pytest.raises(InputError, match="coeff must be a finite number"):
            addition_hooks(m, s.direction, 1, coeff=coeff)
    with pytest.raises(NonFiniteError, match="overflows"):
        addition_hooks(m, s.direction.float() * 1e19, 1, coeff=1e30)
    with pytest.raises(InputError, match="out of range"):
        addition_hooks(m, s.direction, -1)


def test_vector_shape_and_dtype_are_checked(syn):
    m, _, _, _ = syn
    assert m.d_model == 64
    square = torch.ones(8, 8)  # 64 entries: would fit if flattened
    with pytest.raises(DirectionError, match=r"shape \(8, 8\)"):
        addition_hooks(m, square, 1)
    with pytest.raises(DirectionError, match=r"shape \(8, 8\)"):
        Direction(square, layer=1, position=-1)
    ints = torch.ones(64, dtype=torch.int32)
    with pytest.raises(InputTypeError, match="int32.*floating"):
        ablation_hooks(m, ints)
    with pytest.raises(InputTypeError, match="int32"):
        Direction(ints, layer=1, position=-1)
    with pytest.raises(InputTypeError, match="layer must be an int"):
        Direction(torch.ones(64), layer="3", position=-1)


# ---- properties over random directions, shapes and dtypes (hypothesis) -------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from refusal_lens.directions import unit_vector  # noqa: E402

DTYPES = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}


@st.composite
def vectors_and_batches(draw):
    """A random direction of any scale (1e-6 .. 1e19 entries) and a batch of any shape."""
    d = draw(st.integers(1, 96))
    lead = draw(st.lists(st.integers(1, 5), min_size=0, max_size=3))
    dtype = draw(st.sampled_from(list(DTYPES)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    scale = 10.0 ** draw(st.integers(-6, 19))
    vec = torch.randn(d, generator=gen, dtype=torch.float64) * scale
    x = torch.randn(*lead, d, generator=gen, dtype=torch.float64).to(dtype)
    return vec.to(draw(st.sampled_from([torch.float32, torch.float64]))), x, dtype


@settings(max_examples=200, deadline=None)
@given(vectors_and_batches())
def test_project_out_is_idempotent_and_leaves_nothing_along_the_direction(case):
    vec, x, dtype = case
    u = unit_vector(vec)
    assert torch.isfinite(u).all() and abs(float(u.double().norm()) - 1) < 1e-6
    once = project_out(x, u)
    assert once.dtype == dtype and once.shape == x.shape
    eps = max(DTYPES[dtype], DTYPES[vec.dtype])  # the coarser of the batch's and the unit's
    tol = eps * max(1.0, float(x.double().abs().max())) * x.shape[-1] ** 0.5
    along = (once.double() @ u.double()).abs()
    assert float(along.max()) <= tol
    assert float((project_out(once, u).double() - once.double()).abs().max()) <= 2 * tol


#: A random direction for the synthetic model: (seed, log10 scale, dtype), built by _vector.
model_directions = st.tuples(st.integers(0, 2**31), st.integers(-3, 19),
                             st.sampled_from([torch.float32, torch.float64]))


def _vector(case, d_model: int = 64) -> torch.Tensor:
    seed, exp, dtype = case
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(d_model, generator=gen, dtype=torch.float64) * 10.0 ** exp).to(dtype)


@settings(max_examples=15, deadline=None)
@given(model_directions)
def test_ablation_is_idempotent_on_the_model(syn, case):
    m, _, _, batch = syn
    vec = _vector(case)
    seen = {}

    def grab(x, hook):  # runs after the ablation hook at the same point
        seen[last] = x.detach().double()
        return x

    last = f"blocks.{m.n_layers - 1}.hook_resid_post"
    once = m.logits(batch, ablation_hooks(m, vec) + [(last, grab)])
    twice = m.logits(batch, ablation_hooks(m, vec) + ablation_hooks(m, vec))
    assert torch.isfinite(once).all()
    assert _real_max(once, twice, batch) < 1e-4
    resid = seen[last][batch.attention_mask.bool()]
    along = resid @ unit_vector(vec).double()
    assert float(along.abs().max()) < 1e-5 * float(resid.norm(dim=-1).max())


@settings(max_examples=15, deadline=None)
@given(model_directions, st.integers(0, 3), st.floats(-8, 8, allow_nan=False))
def test_addition_then_subtraction_is_the_identity(syn, case, layer, coeff):
    m, _, _, batch = syn
    vec = _vector(case)
    vec = vec / vec.double().norm().to(vec.dtype) * 5  # residual-sized: float32 rounding stays small
    hooks = addition_hooks(m, vec, layer, coeff) + addition_hooks(m, vec, layer, -coeff)
    assert _real_max(m.logits(batch, hooks), m.logits(batch), batch) < 1e-3
