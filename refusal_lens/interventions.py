"""Interventions: directional ablation and activation addition, checked against a model.

:func:`ablation` and :func:`addition` build :class:`~refusal_lens.execution.Intervention`
values, which the library passes as ``interventions=`` (generation, scoring, selection and
evaluation), so :mod:`refusal_lens.execution` may run them on the plain modules.
:func:`ablation_hooks` / :func:`addition_hooks` render the same values as TransformerLens
``(hook_name, fn)`` hooks (lists compose by concatenation) for ``model.bridge.hooks`` and
``fwd_hooks=``, which run on the bridge. :func:`ablated` / :func:`added` scope a value over a
``with`` block. Weight orthogonalization lives in ``orthogonalize.py``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from .directions import Direction, check_vector, unit_vector
from .errors import InputError, NonFiniteError
from .execution import HookList, Intervention, intervening
from .hf_modules import project

if TYPE_CHECKING:
    from .model import LensModel

__all__ = ["Intervention", "HookList", "ABLATION_POINTS", "ablation", "addition",
           "ablation_hooks", "addition_hooks", "project_out", "hooked", "ablated", "added"]

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
    ``k`` units: one per group of rows, see :func:`refusal_lens.hf_modules.project`)."""
    return project(x, unit)


def ablation(
    model: "LensModel",
    direction: VectorLike,
    layers: Sequence[int] | None = None,
    points: Sequence[str] = ABLATION_POINTS,
    strength: float = 1.0,
) -> Intervention:
    """Directional ablation: project the unit direction out at every layer and position.

    A ``(k, d_model)`` tensor ablates ``k`` directions at once, one per group of rows
    (``op="ablate_grouped"``): :func:`refusal_lens.execution.forward` runs the batch as ``k``
    copies, to score many candidates in one pass.

    ``strength`` (``alpha >= 0``; 1 = full ablation) removes that fraction of the component,
    ``x - alpha (x . u) u``: projecting off ``sqrt(alpha) u`` computes exactly that.
    """
    if (isinstance(strength, bool) or not isinstance(strength, (int, float))
            or not math.isfinite(strength) or strength < 0):
        raise InputError(f"strength must be a finite number >= 0 (1 = full ablation), got "
                         f"{strength!r}.")
    grouped = isinstance(direction, Tensor) and direction.dim() == 2
    if grouped:
        unit = torch.stack([unit_vector(_as_vector(v, model)) for v in direction])
    else:
        unit = unit_vector(_as_vector(direction, model))
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
    out = Intervention("ablate_grouped" if grouped else "ablate", unit, tuple(layers),
                       tuple(points), strength=float(strength))
    out.names(model)  # a clear error if none of the points exists in this model
    return out


def ablation_hooks(model: "LensModel", direction: VectorLike, layers: Sequence[int] | None = None,
                   points: Sequence[str] = ABLATION_POINTS, strength: float = 1.0) -> HookList:
    """:func:`ablation` as TransformerLens hooks (for ``model.bridge.hooks`` and ``fwd_hooks=``,
    which run on the bridge)."""
    return ablation(model, direction, layers, points, strength).hooks(model)


def addition(
    model: "LensModel",
    vector: VectorLike,
    layer: int,
    coeff: float = 1.0,
) -> Intervention:
    """Activation addition: ``x <- x + coeff * r`` at one layer's ``resid_pre``, all positions.

    ``r`` is the raw (unnormalised) vector; ``coeff=-1`` subtracts it.
    """
    _check_layers(model, [layer])
    if isinstance(coeff, bool) or not isinstance(coeff, (int, float)) or not math.isfinite(coeff):
        raise InputError(f"coeff must be a finite number, got {coeff!r}.")
    vec = _as_vector(vector, model)
    if not torch.isfinite((coeff * vec).to(model.dtype)).all():
        raise NonFiniteError(f"coeff * vector overflows the model's dtype ({coeff} x norm "
                             f"{float(vec.double().norm()):.3g}); use a smaller coefficient or "
                             "rescale the vector.")
    return Intervention("add", vec, (int(layer),), ("hook_resid_pre",), coeff=coeff)


def addition_hooks(model: "LensModel", vector: VectorLike, layer: int, coeff: float = 1.0
                   ) -> HookList:
    """:func:`addition` as TransformerLens hooks."""
    return addition(model, vector, layer, coeff).hooks(model)


@contextmanager
def hooked(model: "LensModel", hooks: HookList) -> Iterator["LensModel"]:
    """Run everything inside the ``with`` block under TransformerLens ``hooks`` (removed on
    exit; they run on the bridge)."""
    with model.bridge.hooks(fwd_hooks=list(hooks)):
        yield model


def ablated(model: "LensModel", direction: VectorLike) -> "contextmanager":
    """``with ablated(model, d): ...`` — the model with ``d`` ablated everywhere (the same path
    and logits as passing ``interventions=[ablation(model, d)]``)."""
    return intervening(model, [ablation(model, direction)])


def added(model: "LensModel", vector: VectorLike, layer: int, coeff: float = 1.0):
    """``with added(model, r, layer): ...`` — the model with ``coeff * r`` added at ``layer``."""
    return intervening(model, [addition(model, vector, layer, coeff)])
