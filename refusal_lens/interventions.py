"""Interventions as TransformerLens hook sets: directional ablation and activation addition.

Each builder returns a list of ``(hook_name, fn)`` pairs; lists compose by concatenation and
are used with ``model.bridge.hooks(fwd_hooks=...)``, :func:`refusal_lens.generation.generate`,
or the context managers below. The functions are tagged with what they compute, so generation
and scoring can also apply them on the plain Hugging Face modules (:mod:`refusal_lens.runner`).
Weight orthogonalization lives in ``orthogonalize.py``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from .directions import Direction, DirectionError
from .runner import project, tag

if TYPE_CHECKING:
    from .model import LensModel

HookList = list[tuple[str, Callable]]
VectorLike = Union[Direction, Tensor]

# Where the residual stream is cleaned: the block input, and what attention and the MLP write.
ABLATION_POINTS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")


def _as_vector(direction: VectorLike, model: "LensModel") -> Tensor:
    if isinstance(direction, Direction):
        direction.check_width(model)
        vec = direction.vector
    else:
        vec = torch.as_tensor(direction).reshape(-1)
        if vec.shape[0] != model.d_model:
            raise DirectionError(
                f"Vector has width {vec.shape[0]} but the model has d_model {model.d_model}."
            )
    if not torch.isfinite(vec).all():
        raise DirectionError("The direction contains NaN or inf.")
    return vec.detach()


def project_out(
    x: Float[Tensor, "... d_model"], unit: Float[Tensor, "d_model"]
) -> Float[Tensor, "... d_model"]:
    """``x - (x . u) u``: the component of ``x`` along unit vector ``u`` removed (a stack of
    ``k`` units: one per group of rows, see :func:`refusal_lens.runner.project`)."""
    return project(x, unit)


def ablation_hooks(
    model: "LensModel",
    direction: VectorLike,
    layers: Sequence[int] | None = None,
    points: Sequence[str] = ABLATION_POINTS,
    strength: float = 1.0,
) -> HookList:
    """Directional ablation: project the unit direction out at every layer and position.

    A ``(k, d_model)`` tensor ablates ``k`` directions at once, one per group of rows: the
    batch must then be ``k`` consecutive copies of the same prompts (used to score many
    candidates in one pass; see :func:`refusal_lens.runner.forward`'s ``groups``).

    ``strength`` (``alpha >= 0``; 1 = full ablation) removes that fraction of the component,
    ``x - alpha (x . u) u``: projecting off ``sqrt(alpha) u`` computes exactly that, so partial
    ablation keeps the plain-module path.
    """
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and strength >= 0):
        raise ValueError(f"strength must be a finite number >= 0 (1 = full ablation), got "
                         f"{strength!r}.")
    vecs = (torch.stack([_as_vector(v, model) for v in direction])
            if isinstance(direction, Tensor) and direction.dim() == 2
            else _as_vector(direction, model))
    norms = vecs.norm(dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        raise DirectionError("Cannot ablate the zero vector.")
    unit = (vecs / norms).to(model.device)
    if strength != 1.0:
        unit = unit * math.sqrt(strength)

    def hook_fn(x: Tensor, hook=None) -> Tensor:
        return project_out(x, unit)

    tag(hook_fn, "project", unit)

    layers = range(model.n_layers) if layers is None else layers
    names = [f"blocks.{l}.{p}" for l in layers for p in points]
    # Parallel attention/MLP blocks (GPT-NeoX, GPT-J, Phi) have no resid_mid: skip absent points.
    return [(name, hook_fn) for name in names if name in model.bridge.hook_dict]


def addition_hooks(
    model: "LensModel",
    vector: VectorLike,
    layer: int,
    coeff: float = 1.0,
) -> HookList:
    """Activation addition: ``x <- x + coeff * r`` at one layer's ``resid_pre``, all positions.

    ``r`` is the raw (unnormalised) vector; ``coeff=-1`` subtracts it.
    """
    if not 0 <= layer < model.n_layers:
        raise ValueError(f"layer {layer} out of range 0..{model.n_layers - 1}.")
    vec = _as_vector(vector, model).to(model.device)

    delta = coeff * vec

    def hook_fn(x: Tensor, hook=None) -> Tensor:
        return x + delta.to(x.dtype)

    tag(hook_fn, "add", delta)

    return [(f"blocks.{layer}.hook_resid_pre", hook_fn)]


@contextmanager
def hooked(model: "LensModel", hooks: HookList) -> Iterator["LensModel"]:
    """Run everything inside the ``with`` block under ``hooks`` (removed on exit)."""
    with model.bridge.hooks(fwd_hooks=list(hooks)):
        yield model


def ablated(model: "LensModel", direction: VectorLike) -> "contextmanager":
    """``with ablated(model, d): ...`` — the model with ``d`` ablated everywhere."""
    return hooked(model, ablation_hooks(model, direction))


def added(model: "LensModel", vector: VectorLike, layer: int, coeff: float = 1.0):
    """``with added(model, r, layer): ...`` — the model with ``coeff * r`` added at ``layer``."""
    return hooked(model, addition_hooks(model, vector, layer, coeff))
