"""Cosine traces: how strongly the last token's residual stream points along the refusal direction,
layer by layer, for harmful prompts with and without suffixes and for harmless prompts
(Arditi et al. 2024, Fig. 5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .batching import iter_batches
from .console import progress_bar
from .execution import collect

if TYPE_CHECKING:
    from .directions import Direction
    from .model import LensModel


def _unit(direction: "Direction | Tensor", model: "LensModel") -> Float[Tensor, "d_model"]:
    vec = direction.vector if hasattr(direction, "vector") else torch.as_tensor(direction)
    if vec.shape[-1] != model.d_model:
        raise ValueError(f"The direction has width {vec.shape[-1]}, the model {model.d_model}.")
    vec = vec.detach().to(torch.float64, copy=True).to(model.device)
    return vec / vec.norm()


@torch.no_grad()
def last_token_cosines(
    model: "LensModel",
    instructions: Sequence[str],
    direction: "Direction | Tensor",
    include_final: bool = True,
    batch_size: int = 16,
    progress: bool = False,
) -> Float[Tensor, "prompt site"]:
    """Cosine of the last token's ``resid_pre`` (every layer, then the last ``resid_post``)."""
    unit = _unit(direction, model)
    names = [f"blocks.{l}.hook_resid_pre" for l in range(model.n_layers)]
    if include_final:
        names.append(f"blocks.{model.n_layers - 1}.hook_resid_post")
    rows: list[Tensor] = []
    desc = f"cosines ({len(instructions)})" if progress else None
    batches = iter_batches(model, list(instructions), batch_size, desc=desc)
    for cap in collect(model, batches, names, positions=[-1]):
        acts = torch.stack([cap.acts[n][:, 0].to(unit.device, torch.float64) for n in names], 1)
        rows.append((acts @ unit / acts.norm(dim=-1)).cpu())  # (batch, site)
    return torch.cat(rows)


@dataclass
class CosineTraces:
    """Per-condition cosine traces: ``values[cond]`` is (prompt, site); sites are the layers'
    ``resid_pre`` followed (optionally) by the last layer's ``resid_post``."""

    values: dict[str, Float[Tensor, "prompt site"]]
    site_labels: list[str]
    direction_layer: int

    @property
    def conditions(self) -> list[str]:
        return list(self.values)

    @property
    def mean(self) -> Float[Tensor, "cond site"]:
        return torch.stack([v.mean(0) for v in self.values.values()])

    @property
    def std(self) -> Float[Tensor, "cond site"]:
        return torch.stack([v.std(0) if len(v) > 1 else torch.zeros_like(v[0])
                            for v in self.values.values()])

    def at_layer(self, layer: int | None = None) -> dict[str, tuple[float, float]]:
        """``{condition: (mean, sd)}`` at ``resid_pre`` of ``layer`` (default: the direction's)."""
        layer = self.direction_layer if layer is None else layer
        return {c: (float(v[:, layer].mean()), float(v[:, layer].std() if len(v) > 1 else 0.0))
                for c, v in self.values.items()}

    def to_dict(self) -> dict:
        return {"site_labels": self.site_labels, "direction_layer": self.direction_layer,
                "mean": {c: self.values[c].mean(0).tolist() for c in self.values},
                "std": {c: s.tolist() for c, s in zip(self.values, self.std)},
                "n_prompts": {c: len(v) for c, v in self.values.items()}}


def cosine_traces(
    model: "LensModel",
    direction: "Direction | Tensor",
    conditions: dict[str, Sequence[str]],
    include_final: bool = True,
    batch_size: int = 16,
    progress: bool = True,
) -> CosineTraces:
    """Cosine traces for each named list of instructions (see ``suffixes.suffix_conditions``)."""
    if not conditions:
        raise ValueError("Pass at least one condition, e.g. {'harmful': [...]}.")
    values = {}
    for name, instrs in progress_bar(conditions.items(), desc="conditions", disable=not progress,
                                     leave=False):
        if len(instrs) == 0:
            raise ValueError(f"Condition {name!r} has no prompts.")
        values[name] = last_token_cosines(model, instrs, direction, include_final, batch_size)
    labels = [f"pre {l}" for l in range(model.n_layers)]
    if include_final:
        labels.append(f"post {model.n_layers - 1}")
    layer = int(getattr(direction, "layer", -1))
    return CosineTraces(values, labels, layer)


# ---- inputs shared by the suffix analyses -----------------------------------------------------
@dataclass
class SuffixAnalysis:
    """Everything the suffix figures need: the direction, prompts and suffixes."""

    direction: "Direction"
    harmful: list[str]
    harmless: list[str]
    adversarial: str
    random_suffixes: list[str]
    direction_source: str

    def conditions(self, with_harmless: bool = True) -> dict[str, list[str]]:
        from .suffixes import suffix_conditions

        return suffix_conditions(self.harmful, self.harmless if with_harmless else None,
                                 self.adversarial, self.random_suffixes)


def suffix_analysis(model: "LensModel", n_prompts: int = 100, n_random: int = 3,
                    direction: "Direction | str | None" = None,
                    model_key: str = "embedded") -> SuffixAnalysis:
    """Held-out prompts (JailbreakBench test, harmless test), the shipped suffix of
    ``model_key``, ``n_random`` random suffixes of equal length, and the refusal direction:
    ``direction`` as given (a :class:`Direction`, or a saved one's path), or by default the
    direction shipped for ``model_key`` (:func:`refusal_lens.shipped.shipped_direction`)."""
    from .datasets import load_splits
    from .directions import Direction
    from .shipped import shipped_direction
    from .suffixes import random_suffix, shipped_suffix

    entry = shipped_suffix(model_key)
    if direction is None:
        direction = shipped_direction(model_key, model)
        source = f"shipped direction of {model_key!r} ({direction.meta['shipped']['command']})"
    elif isinstance(direction, Direction):
        direction.check_width(model)
        source = "given"
    else:
        source = str(direction)
        direction = Direction.load(direction, model)
    s = load_splits(seed=0)
    n_tok = len(entry["ids"])
    randoms = [random_suffix(model, n_tok, seed=1000 + i) for i in range(n_random)]
    return SuffixAnalysis(direction, s.harmful_test[:n_prompts], s.harmless_test[:n_prompts],
                          entry["suffix"], randoms, source)
