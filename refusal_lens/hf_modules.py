"""The Hugging Face model under the TransformerLens bridge: its modules, a shared prefix's KV
cache, and the KV-cached greedy decoding loop.

:mod:`refusal_lens.execution` runs a pass on these plain modules when it can (its backend
rule), with the bridge's wrappers temporarily taken out (the same weights; no copy). The
residual hook points map one to one onto plain modules:

* ``blocks.{l}.hook_resid_pre``  -> input of decoder layer ``l``;
* ``blocks.{l}.hook_resid_mid``  -> input of layer ``l``'s second norm (the bridge's own
  ``resid_mid`` hook point is that norm's input, too);
* ``blocks.{l}.hook_resid_post`` -> output of decoder layer ``l``.

A token prefix shared by every row of a batch (the chat template's system turn) can run once
and be reused through the KV cache: :func:`shared_prefix_len`, :func:`split_prefix`,
:func:`prefix_cache`. :func:`greedy_decode` continues a batch on whichever module it is given
(the plain model, or the wrapped one under the bridge's hooks).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.cache_utils import DynamicCache

from .errors import NonFiniteError

if TYPE_CHECKING:
    from .model import LensModel

__all__ = ["unwrap", "bridges_removed", "residual_modules", "module_hook", "project",
           "in_shared_prefix", "MIN_SHARED_PREFIX", "shared_prefix_len", "usable_prefix",
           "split_prefix",
           "prefix_cache", "greedy_decode", "reference_decode"]

#: Set while a shared prefix runs (:func:`prefix_cache`): reads skip that pass.
_IN_PREFIX: ContextVar[bool] = ContextVar("refusal_lens_in_prefix", default=False)


def in_shared_prefix() -> bool:
    """True while a batch's shared prefix runs on its own (its activations belong to no row)."""
    return _IN_PREFIX.get()


def unwrap(module: nn.Module) -> nn.Module:
    """Descend through TransformerLens bridge wrappers to the Hugging Face module."""
    while isinstance(getattr(module, "original_component", None), nn.Module):
        module = module.original_component
    return module


@contextmanager
def bridges_removed(root: nn.Module) -> Iterator[nn.Module]:
    """Put the original Hugging Face modules back in place of bridge wrappers, temporarily."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []

    def visit(module: nn.Module) -> None:
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            inner = unwrap(child)
            if inner is not child:
                swapped.append((module, name, child))
                module._modules[name] = inner
            visit(inner)

    try:
        visit(root)
        yield root
    finally:
        for module, name, child in reversed(swapped):
            module._modules[name] = child


def residual_modules(model: "LensModel") -> dict[str, tuple[str, nn.Module]] | None:
    """``hook name -> (kind, plain module)`` for every residual hook point the plain modules
    serve (``kind``: ``"pre"``, the module's input; ``"post"``, its output), or ``None`` when
    the bridge's blocks do not expose their Hugging Face modules."""
    blocks = getattr(model.bridge, "blocks", None)
    if blocks is None:
        return None
    out: dict[str, tuple[str, nn.Module]] = {}
    for l, block in enumerate(blocks):
        layer = unwrap(block)
        if layer is block:
            return None
        out[f"blocks.{l}.hook_resid_pre"] = ("pre", layer)
        out[f"blocks.{l}.hook_resid_post"] = ("post", layer)
        ln2 = getattr(block, "ln2", None)
        if ln2 is not None and unwrap(ln2) is not ln2:
            out[f"blocks.{l}.hook_resid_mid"] = ("pre", unwrap(ln2))
    return out


def module_hook(module: nn.Module, kind: str, fns: list[Callable[[Tensor], Tensor]]) -> Any:
    """Register ``fns`` (each ``x -> x'``, in order) on ``module``'s input (``kind="pre"``) or
    output (``"post"``); returns the handle to remove."""
    if kind == "pre":
        def pre(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            x = args[0] if args else kwargs["hidden_states"]
            for fn in fns:
                x = fn(x)
            return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})
        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(mod: nn.Module, args: tuple, output: Any) -> Any:
        first = output[0] if isinstance(output, tuple) else output
        for fn in fns:
            first = fn(first)
        return (first, *output[1:]) if isinstance(output, tuple) else first
    return module.register_forward_hook(post)


def project(x: Float[Tensor, "... d_model"], unit: Tensor) -> Float[Tensor, "... d_model"]:
    """``x - (x . u) u`` over the last axis. A ``(k, d_model)`` stack of units means the rows
    of ``x`` are ``k`` equal consecutive groups, group ``g`` projected off ``unit[g]``."""
    u = unit.to(device=x.device, dtype=x.dtype)
    if u.dim() == 1:
        return x - (x @ u).unsqueeze(-1) * u
    k = u.shape[0]
    if x.shape[0] % k:
        raise ValueError(f"{x.shape[0]} rows do not split into {k} groups, one per direction.")
    xs = x.reshape(k, -1, x.shape[-1])
    return (xs - (xs @ u.unsqueeze(-1)) * u.unsqueeze(1)).reshape(x.shape)


#: Fewer shared leading tokens than this are not worth a separate prefix pass.
MIN_SHARED_PREFIX = 8


def shared_prefix_len(input_ids: Int[Tensor, "batch seq"],
                      attention_mask: Int[Tensor, "batch seq"]) -> int:
    """Length of the token prefix every (left-padded) row starts with, keeping at least one
    token of each row after it (0 when rows share nothing)."""
    lengths = attention_mask.sum(-1)
    n = int(lengths.min()) - 1
    if n <= 0 or input_ids.shape[0] < 2:
        return 0
    starts = attention_mask.shape[1] - lengths  # left padding: real tokens end every row
    rows = torch.stack([input_ids[i, int(s): int(s) + n] for i, s in enumerate(starts)])
    same = (rows == rows[:1]).all(0)
    return n if bool(same.all()) else int(same.long().argmin())


def usable_prefix(input_ids: Tensor, attention_mask: Tensor, keep: int) -> int:
    """How many leading tokens to run once for the whole batch: the shared prefix, cut so every
    row keeps its last ``keep`` tokens for itself, if at least :data:`MIN_SHARED_PREFIX` long
    and the batch is left-padded (the layout :func:`split_prefix` keeps); else 0."""
    if not bool(attention_mask[:, -1].all()):
        return 0
    p = min(shared_prefix_len(input_ids, attention_mask),
            int(attention_mask.sum(-1).min()) - keep)
    return p if p >= MIN_SHARED_PREFIX else 0


def split_prefix(input_ids: Tensor, attention_mask: Tensor, p: int
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(prefix [1, p], rest ids, full mask, rest position ids)``: each row without its first
    ``p`` real tokens, still left-padded; the mask covers prefix + rest, so pads sit between."""
    lengths = attention_mask.sum(-1)
    width = int(lengths.max()) - p
    rest = torch.zeros(input_ids.shape[0], width, dtype=input_ids.dtype, device=input_ids.device)
    rest_mask = torch.zeros_like(rest)
    for i, n in enumerate(lengths.tolist()):
        rest[i, width - (n - p):] = input_ids[i, -(n - p):]
        rest_mask[i, width - (n - p):] = 1
    prefix = input_ids[:1, input_ids.shape[1] - int(lengths[0]):][:, :p]
    mask = torch.cat([torch.ones(input_ids.shape[0], p, dtype=attention_mask.dtype,
                                 device=attention_mask.device), rest_mask.to(attention_mask)], 1)
    pos = (p + rest_mask.cumsum(-1) - 1).clamp(min=p)
    return prefix, rest, mask, pos


def prefix_cache(hf: nn.Module, prefix: Tensor, batch: int, groups: int = 1) -> Any:
    """KV cache of ``prefix`` (one row, under whatever hooks are active) repeated for ``batch``
    rows; with ``groups`` (grouped interventions, see :func:`project`) it runs once per group.
    Reads (:func:`in_shared_prefix`) do not see this pass."""
    if batch % groups:
        raise ValueError(f"{batch} rows do not split into {groups} groups.")
    token = _IN_PREFIX.set(True)
    try:
        cache = hf(input_ids=prefix.expand(groups, -1), use_cache=True,
                   logits_to_keep=1).past_key_values
    finally:
        _IN_PREFIX.reset(token)
    cache.batch_repeat_interleave(batch // groups)
    return cache


def _check_finite(logits: Tensor, step: int) -> None:
    """Refuse NaN/inf logits: their argmax is arbitrary, and the empty or garbage text it
    decodes to would be judged "not refused"."""
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError(
            f"Non-finite logits at generated token {step} (NaN/inf weights or activations, an "
            "overflowing intervention, or float16 overflow): check the model's weights (a "
            "corrupt cache: delete and rebuild it), use float32, and check the direction and "
            "coefficient.")


class _FiniteScores(LogitsProcessor):
    """The same check inside the model's own ``generate`` (the uncached reference path)."""

    def __init__(self) -> None:
        self.step = 0

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        _check_finite(scores, self.step)
        self.step += 1
        return scores


@torch.no_grad()
def greedy_decode(hf: nn.Module, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int,
                  eos: Sequence[int], pad_id: int, past: Any = None) -> Tensor:
    """Greedy continuation of a left-padded batch with a KV cache, ``pad_id`` after each
    row's end-of-sequence token (what ``generate(do_sample=False)`` returns).

    ``past`` holds the KV cache of the first ``past.get_seq_length()`` columns (a shared
    prefix), which are then not recomputed. A row that has emitted an end-of-sequence token
    leaves the batch (its cache rows are dropped), so decoding costs what the unfinished rows
    need.
    """
    n = input_ids.shape[0]
    out = torch.full((n, max_new_tokens), pad_id, dtype=input_ids.dtype,
                     device=input_ids.device)
    eos_t = torch.as_tensor(list(eos), device=input_ids.device)
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    start = past.get_seq_length() if past is not None else 0
    res = hf(input_ids=input_ids[:, start:], attention_mask=attention_mask,
             position_ids=pos[:, start:], past_key_values=past if past is not None
             else DynamicCache(), use_cache=True, logits_to_keep=1)
    cache, logits = res.past_key_values, res.logits[:, -1]
    alive = torch.arange(n, device=input_ids.device)
    mask, last = attention_mask, pos[:, -1:]
    for step in range(max_new_tokens):
        _check_finite(logits, step)
        token = logits.argmax(-1).to(out.device)  # the last layer may sit on another device
        out[alive, step] = token
        if step == max_new_tokens - 1:
            break
        going = ~torch.isin(token, eos_t)
        if not bool(going.all()):
            if not bool(going.any()):
                break
            keep = going.nonzero().squeeze(1)
            alive, token, mask, last = alive[keep], token[keep], mask[keep], last[keep]
            cache.batch_select_indices(keep.cpu())  # CPU indices serve layers on any device
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        last = last + 1
        logits = hf(input_ids=token[:, None], attention_mask=mask, position_ids=last,
                    past_key_values=cache, use_cache=True).logits[:, -1]
    return out


@torch.no_grad()
def reference_decode(hf: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                     max_new_tokens: int, pad_id: int) -> Tensor:
    """The model's own greedy ``generate`` without a cache (the slow reference
    :func:`greedy_decode` is tested against): the new tokens only."""
    return hf.generate(input_ids=input_ids, attention_mask=attention_mask,
                       max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                       top_p=None, top_k=None, use_cache=False, pad_token_id=pad_id,
                       logits_processor=LogitsProcessorList([_FiniteScores()]),
                       )[:, input_ids.shape[1]:]
