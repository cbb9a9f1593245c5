"""Logit lens of a direction: the tokens its unembedding promotes and suppresses.

The vector goes through the model's own final norm (the module the model applies before its
unembedding, weights included) and then the unembedding; the norm's and the unembedding's
biases are subtracted (their output for the zero vector), so what is left is the logit change
the direction itself causes. Run on each layer's candidate vector at the chosen position, it
shows from which layer on the difference in means reads as refusal ("I", "Sorry", ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from .model import LensModel

__all__ = ["direction_logits", "logit_lens"]


@torch.no_grad()
def direction_logits(model: "LensModel", vectors: Float[Tensor, "n d_model"]
                     ) -> Float[Tensor, "n d_vocab"]:
    """Logit change of each row of ``vectors`` after the final norm and the unembedding."""
    if vectors.ndim != 2 or vectors.shape[-1] != model.d_model:
        raise ValueError(f"vectors must have shape (n, {model.d_model}), got "
                         f"{tuple(vectors.shape)}: pass vectors of the model's residual width.")
    b = model.bridge
    norm = getattr(b.ln_final, "original_component", b.ln_final)
    w_u = b.W_U
    x = vectors.to(device=w_u.device, dtype=w_u.dtype)
    zero = torch.zeros_like(x[:1])
    return (norm(x[:, None])[:, 0] - norm(zero[:, None])[:, 0]).float() @ w_u.float()


def logit_lens(model: "LensModel", vectors: dict[int, Tensor], k: int = 10) -> dict[str, Any]:
    """Top-``k`` promoted and suppressed tokens of each layer's vector.

    ``vectors``: layer -> residual vector. Returns ``{"k": k, "layers": [{"layer", "norm",
    "promoted": [[token, logit], ...], "suppressed": [...]}], "zero_layers": [...]}`` (tokens
    decoded, strongest first); zero vectors (e.g. layer 0, where the template tokens' residuals
    do not depend on the prompt) promote nothing and are only listed in ``zero_layers``.
    """
    if not vectors:
        raise ValueError("No vectors: pass {layer: vector} for at least one layer.")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    zero = sorted(l for l, v in vectors.items() if not float(v.norm()) > 0)
    layers = sorted(l for l in vectors if l not in zero)
    if not layers:
        raise ValueError("Every vector is zero: there is nothing to read out.")
    logits = direction_logits(model, torch.stack([vectors[l].float() for l in layers]))
    tok = model.tokenizer

    def rows(vals: Tensor, ids: Tensor) -> list[list[Any]]:
        return [[tok.decode([int(i)]), float(v)] for v, i in zip(vals, ids)]

    out = []
    for l, row in zip(layers, logits):
        top, bottom = row.topk(k), row.topk(k, largest=False)
        out.append({"layer": int(l), "norm": float(vectors[l].norm()),
                    "promoted": rows(top.values, top.indices),
                    "suppressed": rows(bottom.values, bottom.indices)})
    return {"k": k, "layers": out, "zero_layers": [int(l) for l in zero]}
