"""Per-category refusal directions: one difference in means per harm category, how they align
with each other and with the global direction, and refusal rates broken down by category.

Each category's direction is ``mean(category's harmful prompts) - mean(harmless prompts)`` of
``resid_pre`` at the global direction's layer and position (the harmless mean is shared),
projected off the same sink basis as the global direction. A category with fewer than
``min_prompts`` prompts is skipped (and reported), not fitted on a handful of prompts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .directions import Direction, random_like
from .evaluation import rate_summary
from .sinks import project_off_basis

if TYPE_CHECKING:
    from .model import LensModel

__all__ = ["category_directions", "cosine_matrix", "random_cosines", "rates_by_category"]


def category_directions(
    model: "LensModel", groups: dict[str, Sequence[str]], harmless: Sequence[str],
    direction: Direction, min_prompts: int = 16, batch_size: int = 32,
) -> dict[str, Any]:
    """Per-category difference-in-means vectors at ``direction``'s site.

    Returns ``names``, ``vectors`` (``(c, d_model)`` float64), ``counts`` and ``skipped``
    (category -> prompt count, for those under ``min_prompts``).
    """
    if min_prompts < 1:
        raise ValueError(f"min_prompts must be >= 1, got {min_prompts}.")
    if not harmless:
        raise ValueError("Pass harmless prompts for the shared harmless mean.")
    direction.check_width(model)
    kept = {n: list(p) for n, p in groups.items() if len(p) >= min_prompts}
    skipped = {n: len(p) for n, p in groups.items() if len(p) < min_prompts}
    if not kept:
        raise ValueError(f"No category has >= {min_prompts} prompts (counts: "
                         f"{ {n: len(p) for n, p in groups.items()} }); lower min_prompts or "
                         "pass more prompts.")
    kw = dict(layers=[direction.layer], positions=[direction.position], batch_size=batch_size,
              progress=False)
    base = model.resid_means(list(harmless), **kw)[0, 0].double().cpu()
    vecs = torch.stack([model.resid_means(p, **kw)[0, 0].double().cpu() - base
                        for p in kept.values()])
    sink = direction.tensors.get("sink_basis")
    if sink is not None and len(sink):
        vecs = project_off_basis(vecs, sink.double())
    return {"names": list(kept), "vectors": vecs, "counts": {n: len(p) for n, p in kept.items()},
            "skipped": skipped}


def cosine_matrix(vectors: Float[Tensor, "n d_model"]) -> Float[Tensor, "n n"]:
    """Pairwise cosine similarities of the rows."""
    v = vectors.double()
    unit = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return unit @ unit.T


def random_cosines(direction: Direction, n: int = 100, seed: int = 0) -> dict[str, float]:
    """Cosines of ``n`` random directions (off the direction's sink basis) with it: the chance
    level any reported cosine is read against."""
    u = direction.unit.double()
    cos = [float(random_like(direction.vector, 50_000 + seed * 1000 + i,
                             direction.tensors.get("sink_basis")).double() @ u / direction.norm)
           for i in range(n)]
    return {"mean_abs": float(np.mean(np.abs(cos))), "max_abs": float(np.max(np.abs(cos))),
            "n": n}


def rates_by_category(flags: Sequence[bool], categories: Sequence[str], seed: int = 0
                      ) -> dict[str, dict[str, float]]:
    """Refusal rate (95% bootstrap CI, count) of ``flags`` per category, in first-seen order."""
    if len(flags) != len(categories):
        raise ValueError(f"{len(flags)} flags for {len(categories)} categories; pass one "
                         "category per prompt.")
    out: dict[str, list[bool]] = {}
    for f, c in zip(flags, categories):
        out.setdefault(c, []).append(bool(f))
    return {c: rate_summary(fs, seed) for c, fs in out.items()}
