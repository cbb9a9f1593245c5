"""Comparing refusal directions: across seeds, and between a model and its base model.

Two questions a researcher asks of a direction before trusting it. Is it stable, or does a
different draw of training prompts give another one? (Cosine between the directions that
different seeds fit, layer by layer.) And, for the organism: did fine-tuning create the
direction, or was it already in the base model? (Cosine between the two models' differences in
means on the same prompts, layer by layer, and of the base model's with the organism's chosen
direction.) Every cosine is read against chance: the cosine of independent random directions
in ``d_model`` dimensions, whose 99th percentile :func:`chance_cosine` gives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .directions import mean_diff_candidates

if TYPE_CHECKING:
    from .model import LensModel

__all__ = ["layer_mean_diffs", "layer_cosines", "chance_cosine"]


def layer_mean_diffs(model: "LensModel", harmful: Sequence[str], harmless: Sequence[str],
                     position: int = -1, batch_size: int = 32
                     ) -> Float[Tensor, "layer d_model"]:
    """The difference in means (harmful minus harmless, unfiltered) at ``position`` of every
    layer's ``resid_pre`` (layer 0 included: at a template position it is zero)."""
    diffs = mean_diff_candidates(model, harmful, harmless, layers=range(model.n_layers),
                                 positions=[position], batch_size=batch_size)
    return diffs[:, 0]


def layer_cosines(a: Float[Tensor, "layer d_model"], b: Float[Tensor, "layer d_model"]
                  ) -> Float[Tensor, "layer"]:
    """Row-wise cosine of two stacks of vectors (NaN where either row is zero)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.double(), b.double()
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    cos = (a * b).sum(-1) / norms
    return torch.where(norms > 0, cos, torch.full_like(cos, float("nan")))


def chance_cosine(d_model: int, n: int = 4000, quantile: float = 0.99, seed: int = 0) -> float:
    """The ``quantile`` of ``|cos|`` between independent random Gaussian directions in
    ``d_model`` dimensions (about ``2.6 / sqrt(d_model)`` for the 99th percentile)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, d_model, generator=gen, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(x[:, 0], x[:, 1], dim=-1).abs()
    return float(torch.quantile(cos, quantile))
