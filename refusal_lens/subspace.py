"""Multi-direction ablation: a k-dimensional refusal subspace, and random subspaces to match.

Follow-up work finds refusal better described by a few directions (a cone) than by one. The
subspace here starts from the selected direction and adds the main ways harmful prompts differ
from the harmless mean beyond it, at the same site:

* ``u_1`` = the direction's unit vector (so ``k = 1`` is the paper's single-direction ablation);
* ``u_2 .. u_k`` = the top right-singular vectors of the per-prompt differences
  ``a_i - mean(harmless)`` (``a_i``: harmful prompt ``i``'s ``resid_pre`` at the direction's
  layer and position), after projecting off ``u_1`` and the direction's sink basis.

Ablating the subspace projects all ``k`` orthonormal directions out at every layer and position.
Projections off orthonormal vectors commute and compose to the projection off their span, so the
hooks are the single-direction ablation hooks, one per basis vector (the plain-module path).
The control is a random ``k``-dimensional subspace (also off the sink basis): for ablation only
the subspace matters, not a norm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .activations import run_cache
from .directions import Direction
from .interventions import HookList, Intervention, ablation

if TYPE_CHECKING:
    from .model import LensModel

__all__ = ["site_activations", "refusal_subspace", "random_subspace", "subspace_ablation",
           "subspace_ablation_hooks",
           "subspace_sweep"]


@torch.no_grad()
def site_activations(model: "LensModel", instructions: Sequence[str], layer: int, position: int,
                     batch_size: int = 32) -> Float[Tensor, "n d_model"]:
    """Per-prompt ``resid_pre`` (float64, CPU) at ``layer`` and negative ``position``."""
    if not instructions:
        raise ValueError("Pass at least one instruction.")
    if position >= 0:
        raise ValueError(f"position must be a negative offset from the prompt end, got "
                         f"{position}.")
    if not 0 <= layer < model.n_layers:
        raise ValueError(f"layer {layer} out of range 0..{model.n_layers - 1}.")
    name = f"blocks.{layer}.hook_resid_pre"
    out = []
    for i in range(0, len(instructions), batch_size):
        _, cache = run_cache(model, list(instructions[i:i + batch_size]), [name])
        out.append(cache[name][:, position].double().cpu())  # left padding: ends align
    acts = torch.cat(out)
    if not torch.isfinite(acts).all():
        from .activations import ActivationError

        raise ActivationError("NaN or inf in residual activations; use float32.")
    return acts


def _orthonormal(rows: Tensor) -> Tensor:
    q, _ = torch.linalg.qr(rows.T)
    return q.T


def refusal_subspace(
    model: "LensModel", direction: Direction, harmful: Sequence[str], harmless: Sequence[str],
    k: int, batch_size: int = 32,
) -> tuple[Float[Tensor, "k d_model"], dict[str, Any]]:
    """Orthonormal ``(k, d_model)`` float64 basis: the direction, then the top ``k - 1``
    principal directions of the harmful prompts' differences from the harmless mean (see the
    module docstring). Also returns the singular values of those differences beyond ``u_1``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if k > len(harmful):
        raise ValueError(f"k = {k} needs at least {k} harmful prompts, got {len(harmful)}.")
    direction.check_width(model)
    u1 = direction.unit.double().cpu()
    sink = direction.tensors.get("sink_basis")
    off = torch.cat([u1[None], sink.double().cpu()]) if sink is not None and len(sink) else u1[None]
    off = _orthonormal(off)
    a_h = site_activations(model, harmful, direction.layer, direction.position, batch_size)
    a_s = site_activations(model, harmless, direction.layer, direction.position, batch_size)
    diffs = a_h - a_s.mean(0)
    rest = diffs - (diffs @ off.T) @ off
    _, sv, vh = torch.linalg.svd(rest, full_matrices=False)
    basis = _orthonormal(torch.cat([u1[None], vh[: k - 1]]))
    basis = basis * torch.sign((basis * torch.cat([u1[None], vh[: k - 1]])).sum(-1, keepdim=True))
    info = {"singular_values": sv[: max(k - 1, 0) + 3].tolist(),
            "n_harmful": len(harmful), "n_harmless": len(harmless),
            "mean_diff_along_u": [float((diffs.mean(0) @ b)) for b in basis]}
    return basis, info


def random_subspace(d_model: int, k: int, seed: int = 0,
                    basis: Float[Tensor, "rank d_model"] | None = None
                    ) -> Float[Tensor, "k d_model"]:
    """A random orthonormal ``(k, d_model)`` float64 basis (off ``basis``'s span, if given)."""
    if not 1 <= k <= d_model:
        raise ValueError(f"k must be in 1..{d_model}, got {k}.")
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(k, d_model, generator=gen, dtype=torch.float64)
    if basis is not None and len(basis):
        b = basis.double().cpu()
        r = r - (r @ b.T) @ b
    return _orthonormal(r)


def subspace_ablation(model: "LensModel", basis: Float[Tensor, "k d_model"],
                      strength: float = 1.0) -> list[Intervention]:
    """Ablate the span of the orthonormal rows of ``basis`` at every layer and position:
    ``x - strength * B^T B x`` (one projection per row, applied in turn)."""
    b = torch.as_tensor(basis).double()
    if b.dim() != 2 or b.shape[0] < 1:
        raise ValueError(f"basis must be a (k, d_model) matrix with k >= 1, got shape "
                         f"{tuple(b.shape)}.")
    gram = b @ b.T
    if not torch.allclose(gram, torch.eye(len(b), dtype=b.dtype), atol=1e-5):
        raise ValueError("basis rows must be orthonormal; build it with refusal_subspace or "
                         "random_subspace (or orthonormalise it with torch.linalg.qr).")
    return [ablation(model, row.float(), strength=strength) for row in b]


def subspace_ablation_hooks(model: "LensModel", basis: Float[Tensor, "k d_model"],
                            strength: float = 1.0) -> HookList:
    """:func:`subspace_ablation` as TransformerLens hooks."""
    return [h for iv in subspace_ablation(model, basis, strength) for h in iv.hooks(model)]


def subspace_sweep(
    model: "LensModel", basis: Float[Tensor, "k d_model"], harmful: Sequence[str],
    harmless: Sequence[str], ks: Sequence[int] | None = None,
    reference: Sequence[str] | None = None, seed: int = 0, sink_basis: Tensor | None = None,
    max_new_tokens: int = 32, batch_size: int = 32, progress: bool = True,
) -> dict[str, Any]:
    """Harmful refusal (95% CI) and harmless capability (CE, KL) with the first ``k`` rows of
    ``basis`` ablated, for each ``k`` in ``ks`` (default 1..k), beside a random ``k``-dim
    subspace (seed ``seed``, off ``sink_basis``)."""
    from .sweeps import Meter

    ks = list(range(1, len(basis) + 1)) if ks is None else list(ks)
    if not ks or any(not 1 <= k <= len(basis) for k in ks):
        raise ValueError(f"ks must lie in 1..{len(basis)} (the basis has {len(basis)} rows), "
                         f"got {ks}.")
    if not harmful:
        raise ValueError("Pass a non-empty list of harmful prompts.")
    meter = Meter(model, harmless, reference, None, max_new_tokens, batch_size, seed)
    out: dict[str, Any] = {"baseline": meter.baseline(harmful), "rows": [], "seed": seed,
                           "n_harmful": len(harmful), "n_harmless": len(harmless),
                           "max_new_tokens": max_new_tokens, "ce_text": meter.ce_text}
    for k in tqdm(ks, desc="subspace ablation", disable=not progress):
        row: dict[str, Any] = {"k": k}
        rand = random_subspace(basis.shape[-1], k, 40_000 + 97 * seed + k, sink_basis)
        for name, b in (("subspace", basis[:k]), ("random", rand)):
            hooks = subspace_ablation(model, b)
            row[name] = {"refusal": meter.refusal(harmful, hooks)} | meter.capability(hooks)
        out["rows"].append(row)
    return out
