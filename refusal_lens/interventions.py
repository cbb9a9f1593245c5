"""Interventions as TransformerLens hook sets: directional ablation and activation addition.

Each builder returns a list of ``(hook_name, fn)`` pairs; lists compose by concatenation and
are used with ``model.bridge.hooks(fwd_hooks=...)``, :func:`refusal_lens.generation.generate`,
or the context managers below. The functions are tagged with what they compute, so generation
and scoring can also apply them on the plain Hugging Face modules (:mod:`refusal_lens.runner`).
Weight orthogonalization lives in ``orthogonalize.py``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from .directions import Direction, DirectionError
from .placement import execution_device
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
) -> HookList:
    """Directional ablation: project the unit direction out at every layer and position.

    A ``(k, d_model)`` tensor ablates ``k`` directions at once, one per group of rows: the
    batch must then be ``k`` consecutive copies of the same prompts (used to score many
    candidates in one pass; see :func:`refusal_lens.runner.forward`'s ``groups``).
    """
    vecs = (torch.stack([_as_vector(v, model) for v in direction])
            if isinstance(direction, Tensor) and direction.dim() == 2
            else _as_vector(direction, model))
    norms = vecs.norm(dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        raise DirectionError("Cannot ablate the zero vector.")
    unit = vecs / norms
    layers = range(model.n_layers) if layers is None else layers
    hooks: HookList = []
    copies: dict[torch.device, Tensor] = {}
    for l in layers:
        u = on_layer(model, unit, l, copies)

        def hook_fn(x: Tensor, hook=None, u=u) -> Tensor:
            return project_out(x, u)

        tag(hook_fn, "project", u)
        # Parallel attention/MLP blocks (GPT-NeoX, GPT-J, Phi) have no resid_mid: skip absent
        # points.
        hooks += [(name, hook_fn) for name in (f"blocks.{l}.{p}" for p in points)
                  if name in model.bridge.hook_dict]
    return hooks


def on_layer(model: "LensModel", vector: Tensor, layer: int,
             copies: dict[torch.device, Tensor]) -> Tensor:
    """``vector`` on the device decoder layer ``layer`` computes on, in the model's dtype.

    One copy per device (kept in ``copies``), made when the hooks are built and shared by the
    layers on that device, so a hook never copies its vector while the model runs, also when
    accelerate has spread the layers over several devices.
    """
    dev = layer_device(model, layer)
    if dev not in copies:
        copies[dev] = vector.detach().to(device=dev, dtype=model.dtype)
    return copies[dev]


def layer_device(model: "LensModel", layer: int) -> torch.device:
    """The device decoder layer ``layer`` computes on (see
    :func:`refusal_lens.placement.execution_device`)."""
    if not 0 <= layer < model.n_layers:
        raise ValueError(f"layer {layer} out of range 0..{model.n_layers - 1}.")
    return execution_device(model.bridge.blocks[layer])


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
    delta = on_layer(model, coeff * _as_vector(vector, model), layer, {})

    def hook_fn(x: Tensor, hook=None) -> Tensor:
        return x + delta

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
