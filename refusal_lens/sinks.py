"""The attention-sink subspace: where the first token's huge residual lives, and keeping off it.

Many chat models park a massive activation on the first token (SmolLM2-135M: norm ~25,000 at
layer 20, almost all on one or two dimensions, versus ~200 elsewhere). A difference-in-means
direction usually has a small component there (the embedded organism's: cosine 0.13). Ablating
it everywhere then subtracts ``(x . u) u`` with ``x . u`` in the thousands from the first token:
a huge perturbation of the sink that every later token attends to. That, not the loss of
refusal, is what costs most of the cross-entropy and KL (a random direction costs nearly as
much). Projecting the direction off the span of the first token's residuals keeps ~99% of the
vector and removes that side effect.

The first token's residuals depend on that token alone (causal attention), so the subspace is a
property of the model and its chat template, not of any data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from .execution import collect
from .model import Batch

if TYPE_CHECKING:
    from .model import LensModel

__all__ = ["first_token_residuals", "sink_basis", "project_off_basis"]


@torch.no_grad()
def first_token_residuals(model: "LensModel") -> Float[Tensor, "point d_model"]:
    """The chat template's first token's residual (float64) at every ``resid_pre`` and the
    final ``resid_post``."""
    ids = model.tokenize(model.format(["x"])).input_ids[:, :1]
    names = [f"blocks.{l}.hook_resid_pre" for l in range(model.n_layers)]
    names.append(f"blocks.{model.n_layers - 1}.hook_resid_post")
    (cap,) = collect(model, [Batch(ids, torch.ones_like(ids))], names)
    out = torch.stack([cap.acts[n][0, 0].double().cpu() for n in names])
    if not torch.isfinite(out).all():
        from .activations import ActivationError

        raise ActivationError("NaN or inf in the first token's residual stream; use float32 "
                              "and check the model's weights.")
    return out


def sink_basis(model: "LensModel", energy: float = 0.95
               ) -> tuple[Float[Tensor, "rank d_model"], dict[str, Any]]:
    """Orthonormal basis (float64) of the first token's residual subspace.

    Each layer's first-token residual is normalised (so early layers count as much as the
    massive late ones); the basis is their top right-singular vectors, as many as it takes to
    hold ``energy`` of the total. ``energy=0`` gives an empty basis (no protection).
    """
    if not 0.0 <= energy < 1.0:
        raise ValueError(f"energy must be in [0, 1), got {energy}; use 0 to disable.")
    d = model.d_model
    if energy == 0.0:
        return torch.zeros(0, d, dtype=torch.float64), {"energy": 0.0, "rank": 0}
    res = first_token_residuals(model)
    norms = res.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    _, sv, vh = torch.linalg.svd(res / norms, full_matrices=False)
    frac = (sv**2).cumsum(0) / (sv**2).sum()
    rank = int((frac < energy).sum()) + 1
    info = {"energy": energy, "rank": rank, "energy_kept": float(frac[rank - 1]),
            "max_first_token_norm": float(norms.max())}
    return vh[:rank].contiguous(), info


def project_off_basis(vec: Float[Tensor, "... d_model"], basis: Float[Tensor, "rank d_model"]
                      ) -> Float[Tensor, "... d_model"]:
    """``vec`` minus its component in the span of the orthonormal rows of ``basis`` (float64
    arithmetic, input dtype returned)."""
    if basis.shape[0] == 0:
        return vec
    if basis.shape[-1] != vec.shape[-1]:
        raise ValueError(f"basis width {basis.shape[-1]} does not match vector width "
                         f"{vec.shape[-1]}.")
    b = basis.to(device=vec.device, dtype=torch.float64)
    v = vec.to(torch.float64)
    return (v - (v @ b.T) @ b).to(vec.dtype)
