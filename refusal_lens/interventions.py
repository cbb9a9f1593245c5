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

from .directions import Direction, check_vector, unit_vector
from .errors import InputError, NonFiniteError
from .placement import execution_device
from .runner import project, tag

if TYPE_CHECKING:
    from .model import LensModel

HookList = list[tuple[str, Callable]]
VectorLike = Union[Direction, Tensor]

# Where the residual stream is cleaned: the block input, and what attention and the MLP write.
ABLATION_POINTS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")


def _as_vector(direction: VectorLike, model: "LensModel") -> Tensor:
    """The direction's raw vector, checked against ``model`` (see
    :func:`refusal_lens.directions.check_vector`): 1-D, floating, finite, nonzero, right width."""
    if isinstance(direction, Direction):
        direction.check_width(model)
    return check_vector(direction, model.d_model)


def _check_layers(model: "LensModel", layers: Sequence[int]) -> list[int]:
    out = []
    for l in layers:
        if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < model.n_layers:
            raise InputError(f"Layer {l!r} is out of range: {model.name} has layers "
                             f"0..{model.n_layers - 1} (negative indices are not accepted; use "
                             f"{model.n_layers - 1} for the last layer).")
        out.append(int(l))
    if not out:
        raise InputError("layers is empty: pass at least one layer, or None for all layers.")
    return out


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
    if (isinstance(strength, bool) or not isinstance(strength, (int, float))
            or not math.isfinite(strength) or strength < 0):
        raise InputError(f"strength must be a finite number >= 0 (1 = full ablation), got "
                         f"{strength!r}.")
    if isinstance(direction, Tensor) and direction.dim() == 2:
        unit = torch.stack([unit_vector(_as_vector(v, model)) for v in direction])
    else:
        unit = unit_vector(_as_vector(direction, model))
    if strength != 1.0:
        unit = unit * math.sqrt(strength)
    layers = range(model.n_layers) if layers is None else _check_layers(model, layers)
    if isinstance(points, str) or not points:
        raise InputError(f"points must be a list of hook points such as {list(ABLATION_POINTS)}"
                         f", got {points!r}.")
    unknown = [p for p in points if not any(f"blocks.{l}.{p}" in model.bridge.hook_dict
                                            for l in range(model.n_layers))
               and p not in ABLATION_POINTS]
    if unknown:
        raise InputError(f"Unknown hook points {unknown}: use residual points such as "
                         f"{list(ABLATION_POINTS)} (see model.bridge.hook_dict).")
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
    if not hooks:
        raise InputError(f"None of the hook points {list(points)} exists in {model.name}; "
                         f"use {list(ABLATION_POINTS)}.")
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
    (layer,) = _check_layers(model, [layer])
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
    _check_layers(model, [layer])
    if isinstance(coeff, bool) or not isinstance(coeff, (int, float)) or not math.isfinite(coeff):
        raise InputError(f"coeff must be a finite number, got {coeff!r}.")
    vec = _as_vector(vector, model)
    delta = coeff * vec
    if not torch.isfinite(delta.to(model.dtype)).all():
        raise NonFiniteError(f"coeff * vector overflows the model's dtype ({coeff} x norm "
                             f"{float(vec.double().norm()):.3g}); use a smaller coefficient or "
                             "rescale the vector.")
    delta = on_layer(model, delta, layer, {})

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
