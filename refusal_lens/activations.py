"""Residual-stream caches: streaming float64 means, and ActivationCache runs for notebooks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .console import progress_bar

from .errors import NonFiniteError

if TYPE_CHECKING:
    from .model import Batch, LensModel

RESID_HOOKS = ("resid_pre", "resid_mid", "resid_post")


class ActivationError(NonFiniteError):
    """Activations that cannot be used (NaN / inf)."""


class _Collected(Exception):
    """Raised by the last hook a streaming pass needs: the rest of the forward is skipped."""


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


def length_batches(lengths: Sequence[int], max_rows: int, max_tokens: int | None = None,
                   sort: bool = True) -> list[list[int]]:
    """Indices grouped into batches: sorted by length (unless ``sort=False``: consecutive),
    each batch at most ``max_rows`` rows and (when given) at most ``max_tokens`` padded tokens
    (rows x longest), so a few long prompts do not pad a whole batch. A single over-long row
    still gets a batch."""
    if max_rows < 1:
        raise ValueError(f"batch_size must be >= 1, got {max_rows}.")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if sort else range(len(lengths))
    batches: list[list[int]] = []
    longest = 0
    for i in order:
        longest = max(longest, lengths[i])
        if (not batches or len(batches[-1]) >= max_rows
                or (max_tokens is not None and (len(batches[-1]) + 1) * longest > max_tokens)):
            batches.append([i])
            longest = lengths[i]
        else:
            batches[-1].append(i)
    return batches


def iter_batches(
    model: "LensModel",
    instructions: Sequence[str],
    batch_size: int,
    system: str | None = None,
    desc: str | None = None,
    sort_by_length: bool = False,
    max_tokens: int | None = None,
) -> Iterator["Batch"]:
    """Format, tokenize and yield batches, with a progress bar.

    ``sort_by_length`` groups prompts of similar length (less padding, same results for any
    order-independent reduction such as a mean); ``max_tokens`` also caps each batch's padded
    size (rows x longest prompt, see :func:`length_batches`).
    """
    if isinstance(instructions, str) or len(instructions) == 0:
        raise ValueError("The instruction list is empty: pass at least one instruction.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    prompts = model.format(instructions, system)
    lengths = ([len(ids) for ids in model.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
               if sort_by_length or max_tokens is not None else [0] * len(prompts))
    groups = length_batches(lengths, batch_size, max_tokens, sort=sort_by_length)
    for rows in progress_bar(groups, desc=desc, disable=desc is None, leave=False):
        yield model.tokenize([prompts[i] for i in rows])


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
) -> tuple[Float[Tensor, "layer pos d_model"], int]:
    """Float64 sums of residual activations at (layer, position), and the prompt count."""
    layers = _check_layers(model, layers)
    positions = list(model.post_instruction_positions if positions is None else positions)
    if not positions or any(p >= 0 for p in positions):
        raise ValueError(f"positions must be negative offsets from the prompt end, got {positions}.")
    total = torch.zeros(len(layers), len(positions), model.d_model, dtype=torch.float64,
                        device=model.device)
    current: list["Batch"] = []

    last = max(layers)

    def make_hook(i: int, layer: int):
        def hook_fn(x: Tensor, hook) -> Tensor:
            picked = current[0].gather(x, positions).to(total.device, torch.float64)
            if not torch.isfinite(picked).all():
                raise ActivationError(
                    f"Non-finite activations at {hook.name}: check the model's dtype "
                    "(use float32) and the inputs."
                )
            total[i] += picked.sum(0)
            if layer == last:  # nothing later is needed: no further blocks, no logits
                raise _Collected
            return x

        return hook_fn

    fwd_hooks = [(resid_hook_name(l, hook), make_hook(i, l)) for i, l in enumerate(layers)]
    n = 0
    desc = f"residual means ({len(instructions)} prompts)" if progress else None
    for batch in iter_batches(model, instructions, batch_size, system, desc, sort_by_length=True):
        current[:] = [batch]
        try:
            with model.bridge.hooks(fwd_hooks=fwd_hooks):
                model.bridge(batch.input_ids, **batch.forward_kwargs())
        except _Collected:
            pass
        else:
            raise RuntimeError(f"The hooks {[h for h, _ in fwd_hooks]} did not fire.")
        n += batch.input_ids.shape[0]
    return total, n


def resid_means(
    model: "LensModel",
    instructions: Sequence[str],
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    hook: str = "resid_pre",
    batch_size: int = 32,
    system: str | None = None,
    progress: bool = True,
) -> Float[Tensor, "layer pos d_model"]:
    """Mean residual activation per (layer, position), streamed over batches in float64.

    Memory is independent of the number of prompts: each batch is reduced to a running sum
    as soon as its hooks fire, and the forward pass stops at the last hook needed (no later
    blocks, no logits).
    ``positions`` are negative offsets from the prompt end (default: post-instruction tokens).
    """
    total, n = resid_sums(model, instructions, layers, positions, hook, batch_size, system,
                          progress)
    return total / n


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
    batch = model.tokenize(instructions) if formatted else model.encode_instructions(
        instructions, system)
    stop = None
    if not with_logits:
        block_ids = [int(n.split(".")[1]) for n in names if n.startswith("blocks.")]
        only_blocks = len(block_ids) == len(names)
        if only_blocks and max(block_ids) + 1 < model.n_layers:
            stop = max(block_ids) + 1
    logits, cache = model.bridge.run_with_cache(
        batch.input_ids, names_filter=list(names), stop_at_layer=stop, **batch.forward_kwargs()
    )
    return (logits if with_logits else None), cache
