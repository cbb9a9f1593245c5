"""Direct feature attribution (DFA) onto the refusal direction (Arditi et al. 2024, Fig. 6a).

The last token's ``resid_pre`` at layer ``L`` is exactly the sum of what was written into the
residual stream before it: the token (and, if any, position) embedding, and for every layer
``l < L`` each attention head's output ``z[h] @ W_O[l, h]``, the output-projection bias (if the
model has one) and the MLP output. Projecting each piece on the unit direction splits the
projection of the residual into per-component contributions that add up to it exactly.
With grouped-query attention ``hook_z`` is per *query* head, so the split per head holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from .batching import iter_batches
from .console import progress_bar
from .execution import collect
from .placement import materialized
from .traces import _unit

if TYPE_CHECKING:
    from .directions import Direction
    from .model import LensModel


@dataclass
class DFA:
    """Per-prompt contributions to the last token's projection on the direction at ``layer``."""

    layer: int
    embed: Float[Tensor, "prompt"]
    pos_embed: Float[Tensor, "prompt"]
    heads: Float[Tensor, "prompt layer head"]
    attn_bias: Float[Tensor, "prompt layer"]
    mlp: Float[Tensor, "prompt layer"]
    total: Float[Tensor, "prompt"]

    def components(self) -> tuple[list[str], Float[Tensor, "prompt component"]]:
        """Every component's contribution, labelled (``L3H5``, ``L3 attn bias``, ``L3 mlp``)."""
        n_layers, n_heads = self.heads.shape[1:]
        labels, cols = ["embed", "pos_embed"], [self.embed, self.pos_embed]
        for l in range(n_layers):
            labels += [f"L{l}H{h}" for h in range(n_heads)] + [f"L{l} attn bias", f"L{l} mlp"]
            cols += [self.heads[:, l, h] for h in range(n_heads)]
            cols += [self.attn_bias[:, l], self.mlp[:, l]]
        return labels, torch.stack(cols, -1)

    def error(self) -> float:
        """Largest absolute gap between the sum of components and the total projection."""
        return float((self.components()[1].sum(-1) - self.total).abs().max())

    def head_means(self) -> Float[Tensor, "layer head"]:
        return self.heads.mean(0)

    def top_heads(self, k: int = 8) -> list[tuple[int, int]]:
        """The ``k`` heads with the largest mean (signed) contribution to the direction."""
        flat = self.head_means().flatten()
        k = min(k, flat.numel())
        n_heads = self.heads.shape[2]
        return [(int(i) // n_heads, int(i) % n_heads) for i in flat.topk(k).indices]

    def head_values(self, heads: Sequence[tuple[int, int]]) -> Float[Tensor, "prompt k"]:
        return torch.stack([self.heads[:, l, h] for l, h in heads], -1)


def _o_weights(model: "LensModel", layer: int, device: torch.device
               ) -> tuple[Float[Tensor, "head d_head d_model"], Tensor | None]:
    """Layer ``layer``'s ``W_O`` and ``b_O`` (or ``None``) in float64 on ``device``, read from
    wherever they live (also accelerate's disk offload)."""
    attn = model.bridge.blocks[layer].attn
    with materialized(attn):
        w_o = attn.W_O.detach().to(device, torch.float64)
        try:
            bias = attn.b_O
        except AttributeError:
            bias = None
        bias = None if bias is None else bias.detach().to(device, torch.float64)
    return w_o, bias


@torch.no_grad()
def direct_feature_attribution(
    model: "LensModel",
    instructions: Sequence[str],
    direction: "Direction | Tensor",
    layer: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> DFA:
    """DFA of the last token's ``resid_pre`` at ``layer`` (default: the direction's layer)."""
    layer = int(getattr(direction, "layer", -1)) if layer is None else int(layer)
    if not 0 <= layer < model.n_layers:
        raise ValueError(f"layer must be in 0..{model.n_layers - 1}, got {layer}; pass layer=.")
    unit = _unit(direction, model)
    weights = [_o_weights(model, l, unit.device) for l in range(layer)]
    biases = [b for _, b in weights]
    ow = (einops.einsum(torch.stack([w for w, _ in weights]), unit, "l h d m, m -> l h d")
          if layer else None)  # W_O projected on the unit
    names = ["hook_embed", "hook_pos_embed", f"blocks.{layer}.hook_resid_pre"]
    names += [f"blocks.{l}.attn.hook_z" for l in range(layer)]
    names += [f"blocks.{l}.hook_mlp_out" for l in range(layer)]
    names = [n for n in names if n in model.bridge.hook_dict]
    parts: dict[str, list[Tensor]] = {k: [] for k in
                                      ("embed", "pos", "heads", "bias", "mlp", "total")}
    desc = f"DFA ({len(instructions)})" if progress else None
    batches = iter_batches(model, list(instructions), batch_size, desc=desc)
    for cap in collect(model, batches, names, positions=[-1]):
        store = {k: v[:, 0].to(unit.device, torch.float64) for k, v in cap.acts.items()}
        batch = cap.batch
        n = batch.input_ids.shape[0]
        zero = torch.zeros(n, dtype=torch.float64, device=unit.device)
        parts["embed"].append(store["hook_embed"] @ unit)
        pos = store.get("hook_pos_embed")
        parts["pos"].append(pos @ unit if pos is not None and pos.shape[-1] == unit.shape[0]
                            else zero)
        if layer > 0:
            z = torch.stack([store[f"blocks.{l}.attn.hook_z"] for l in range(layer)], 1)
            parts["heads"].append(einops.einsum(z, ow, "b l h d, l h d -> b l h"))
            parts["mlp"].append(torch.stack([store[f"blocks.{l}.hook_mlp_out"] @ unit
                                             for l in range(layer)], 1))
        else:
            parts["heads"].append(torch.zeros(n, 0, model.n_heads, dtype=torch.float64))
            parts["mlp"].append(torch.zeros(n, 0, dtype=torch.float64))
        parts["bias"].append(torch.stack([zero if b is None else zero + b @ unit
                                          for b in biases], 1) if layer else
                             torch.zeros(n, 0, dtype=torch.float64))
        parts["total"].append(store[f"blocks.{layer}.hook_resid_pre"] @ unit)
    cat = {k: torch.cat([t.cpu() for t in v]) for k, v in parts.items()}
    return DFA(layer, cat["embed"], cat["pos"], cat["heads"], cat["bias"], cat["mlp"],
               cat["total"])


def dfa_by_condition(
    model: "LensModel",
    direction: "Direction | Tensor",
    conditions: dict[str, Sequence[str]],
    layer: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, DFA]:
    """:func:`direct_feature_attribution` for each named list of instructions."""
    return {name: direct_feature_attribution(model, instrs, direction, layer, batch_size)
            for name, instrs in progress_bar(conditions.items(), desc="DFA", disable=not progress,
                                             leave=False)}


def head_table(dfas: dict[str, DFA], heads: Sequence[tuple[int, int]]) -> dict[str, dict]:
    """``{"L{l}H{h}": {condition: (mean, sd)}}`` of the given heads' contributions."""
    out: dict[str, dict] = {}
    for l, h in heads:
        row = {}
        for cond, d in dfas.items():
            v = d.heads[:, l, h]
            row[cond] = (float(v.mean()), float(v.std()) if len(v) > 1 else 0.0)
        out[f"L{l}H{h}"] = row
    return out
