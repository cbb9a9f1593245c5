"""Residual-stream caches: streaming float64 means, and ActivationCache runs for notebooks.

Both read activations through :func:`refusal_lens.execution.collect`, the one collector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .batching import iter_batches
from .errors import InputTypeError
from .execution import ActivationError, collect

if TYPE_CHECKING:
    from .model import LensModel

RESID_HOOKS = ("resid_pre", "resid_mid", "resid_post")


@dataclass
class ResidSums:
    """Float64 sums over prompts (``(layer, pos, d_model)``) and their counts: all prompts,
    and those a filter kept (all of them without one)."""

    total: Float[Tensor, "layer pos d_model"]
    n: int
    kept: Float[Tensor, "layer pos d_model"]
    n_kept: int


def resid_hook_name(layer: int, hook: str = "resid_pre") -> str:
    """TransformerLens hook name, e.g. ``blocks.3.hook_resid_pre``."""
    if hook not in RESID_HOOKS:
        raise ValueError(f"hook must be one of {RESID_HOOKS}, got {hook!r}")
    return f"blocks.{layer}.hook_{hook}"


def _check_layers(model: "LensModel", layers: Sequence[int] | None) -> list[int]:
    layers = list(range(model.n_layers)) if layers is None else [int(x) for x in layers]
    if not layers:
        raise ValueError("layers is empty: pass at least one layer index.")
    bad = [x for x in layers if not 0 <= x < model.n_layers]
    if bad:
        raise ValueError(f"Layers {bad} out of range: the model has layers 0..{model.n_layers - 1}.")
    return layers


@torch.no_grad()
def resid_sums(
    model: "LensModel",
    instructions: Sequence[str],
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    hook: str = "resid_pre",
    batch_size: int = 32,
    system: str | None = None,
    progress: bool = True,
    keep: Callable[[Tensor], Tensor] | None = None,
) -> ResidSums:
    """Float64 sums of residual activations at (layer, position) over the prompts, streamed
    through :func:`refusal_lens.execution.collect` (memory independent of the prompt count).

    ``keep`` (given each batch's last-position logits, a boolean per prompt) also sums the
    prompts it keeps, in the same pass; without it the pass stops at the last hook needed.
    """
    layers = _check_layers(model, layers)
    positions = list(model.post_instruction_positions if positions is None else positions)
    if not positions or any(p >= 0 for p in positions):
        raise ValueError(f"positions must be negative offsets from the prompt end, got {positions}.")
    names = [resid_hook_name(l, hook) for l in layers]
    zeros = lambda: torch.zeros(len(layers), len(positions), model.d_model,  # noqa: E731
                                dtype=torch.float64, device=model.device)
    out = ResidSums(zeros(), 0, zeros(), 0)
    desc = f"residual means ({len(instructions)} prompts)" if progress else None
    batches = iter_batches(model, instructions, batch_size, system, desc, sort_by_length=True,
                           max_tokens=64 * batch_size)
    for cap in collect(model, batches, names, positions, logits_to_keep=int(keep is not None)):
        if len(cap.acts) != len(names):
            raise RuntimeError(f"The hooks {sorted(set(names) - set(cap.acts))} did not fire.")
        picked = torch.stack([cap.acts[n].to(out.total.device, torch.float64) for n in names], 1)
        if not torch.isfinite(picked).all():
            raise ActivationError("Non-finite residual activations: check the model's dtype "
                                  "(use float32) and the inputs.")
        out.total += picked.sum(0)
        out.n += picked.shape[0]
        if keep is not None:
            rows = keep(cap.logits[:, -1].float()).to(picked.device)
            out.kept += picked[rows].sum(0)
            out.n_kept += int(rows.sum())
    return out


def resid_means(model: "LensModel", instructions: Sequence[str], **options: Any
                ) -> Float[Tensor, "layer pos d_model"]:
    """Mean residual activation per (layer, position), streamed over batches in float64.

    ``options`` are :func:`resid_sums`' (``layers``, ``positions``: negative offsets from the
    prompt end, default the post-instruction tokens; ``hook``, ``batch_size``, ``system``,
    ``progress``), except ``keep``: the mean is over every prompt. Memory is independent of the
    number of prompts: each batch is reduced to a running sum as soon as its hooks fire, and the
    forward pass stops at the last hook needed (no later blocks, no logits).
    """
    if "keep" in options:
        raise InputTypeError("resid_means averages every prompt; call resid_sums(..., keep=...) "
                        "for the kept prompts' sums.")
    sums = resid_sums(model, instructions, **options)
    return sums.total / sums.n


@torch.no_grad()
def run_cache(
    model: "LensModel",
    instructions: Sequence[str],
    names: Sequence[str],
    system: str | None = None,
    formatted: bool = False,
    with_logits: bool = False,
):
    """Run one batch and return ``(logits or None, ActivationCache)`` of only the named hooks.

    Without ``with_logits`` the forward pass stops after the last block the hooks need.
    Pass ``formatted=True`` when ``instructions`` are already chat-formatted prompts.
    """
    if not names:
        raise ValueError("names is empty: pass the hook names to cache, e.g. "
                         "['blocks.5.hook_resid_pre'].")
    missing = [n for n in names if n not in model.bridge.hook_dict]
    if missing:
        raise KeyError(f"Unknown hook names {missing}; see model.bridge.hook_dict for valid ones.")
    from transformer_lens import ActivationCache

    batch = model.tokenize(instructions) if formatted else model.encode_instructions(
        instructions, system)
    width = batch.input_ids.shape[1]
    (cap,) = collect(model, [batch], names, logits_to_keep=width if with_logits else 0)
    missing = [n for n in names if n not in cap.acts]
    if missing:
        raise RuntimeError(f"The hooks {missing} did not fire.")
    return cap.logits, ActivationCache({n: cap.acts[n] for n in names}, model.bridge)
