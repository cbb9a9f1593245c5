"""Batched greedy generation under any set of TransformerLens hooks (KV cache on by default).

Decoding is our own KV-cached greedy loop (:func:`greedy_decode`) over the wrapped Hugging Face
model, so an intervention given as ``(hook_name, fn)`` pairs applies to the prompt and to every
generated token. Hooks must therefore treat positions uniformly (ablation and addition do).
A row that has ended leaves the batch, so a batch of refusals (~30 tokens) no longer decodes
to the longest answer in it; the text equals what the model's own uncached ``generate``
gives (tested). Ablation and addition hooks take the faster plain path of
:mod:`refusal_lens.runner`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Int
from torch import Tensor, nn
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.cache_utils import Cache, DynamicCache

from .activations import length_batches
from .console import progress_bar
from .errors import InputError, InputTypeError, NonFiniteError
from .runner import prefix_cache, running, split_prefix, usable_prefix

if TYPE_CHECKING:
    from .model import LensModel

Hooks = Sequence[tuple[str, object]]


def eos_ids(hf, tokenizer) -> list[int]:
    """Token ids that end a completion: the generation config's, else the tokenizer's."""
    eos = getattr(getattr(hf, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if not eos:
        raise ValueError("The model has no end-of-sequence token; set "
                         "generation_config.eos_token_id.")
    return eos


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
def greedy_decode(
    hf: nn.Module,
    input_ids: Int[Tensor, "batch seq"],
    attention_mask: Int[Tensor, "batch seq"],
    max_new_tokens: int,
    eos: Sequence[int],
    pad_id: int,
    past: Cache | None = None,
) -> Int[Tensor, "batch new"]:
    """Greedy continuation of a left-padded batch with a KV cache, ``pad_id`` after each
    row's end-of-sequence token (what ``generate(do_sample=False)`` returns).

    ``past`` holds the KV cache of the first ``past.get_seq_length()`` columns (a shared
    prefix), which are then not recomputed. A row that has emitted an end-of-sequence token
    leaves the batch (its cache rows are dropped), so decoding costs what the unfinished rows
    need: refusals end after ~30 tokens, and the rest of their batch no longer carries them.
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
def generate_from_prompts(
    model: "LensModel",
    prompts: Sequence[str],
    fwd_hooks: Hooks = (),
    max_new_tokens: int = 64,
    batch_size: int = 16,
    use_cache: bool = True,
    progress: bool = True,
    max_batch_tokens: int | None = None,
    attn: str | None = "sdpa",
    share_prefix: bool = True,
) -> list[str]:
    """Greedy completions of chat-formatted prompts, returned in input order.

    Prompts are batched by token length (left padding; see :func:`length_batches`, with
    ``max_batch_tokens`` defaulting to ``batch_size * 64``). Hooks from
    :mod:`refusal_lens.interventions` run on the plain modules with ``attn`` attention (see
    :mod:`refusal_lens.runner`), and a token prefix shared by a whole batch (the system turn)
    is computed once and reused through the KV cache (``share_prefix``); any other hook runs
    through the bridge, unshared. ``use_cache=False`` runs the model's own ``generate``
    without a cache (the slow reference).
    """
    if (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
            or max_new_tokens < 1):
        raise InputError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}.")
    if isinstance(prompts, str):
        raise InputTypeError("prompts is a str; pass a list of prompts (wrap one as [text]).")
    if not prompts:
        return []
    tok = model.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"  # generation appends on the right
    lengths = [len(ids) for ids in tok(list(prompts), add_special_tokens=False)["input_ids"]]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] + max_new_tokens > model.n_ctx:
        raise InputError(
            f"Prompt {longest} has {lengths[longest]} tokens; with max_new_tokens="
            f"{max_new_tokens} it exceeds the model's context of {model.n_ctx}. Shorten the "
            "prompt or lower max_new_tokens.")
    batches = length_batches(lengths, batch_size, max_batch_tokens or batch_size * 64)
    outputs: list[str] = [""] * len(prompts)
    eos = eos_ids(model.hf_model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    try:
        bar = progress_bar(batches, desc=f"generating {len(prompts)} prompts",
                           disable=not progress, leave=False)
        for rows in bar:
            batch = model.tokenize([prompts[i] for i in rows])
            ids, mask = batch.input_ids, batch.attention_mask
            p = usable_prefix(model, fwd_hooks, ids, mask) if share_prefix and use_cache else 0
            with running(model, fwd_hooks, attn=attn) as hf:
                past = None
                if p:  # the shared prefix runs once; rows are laid out [prefix][pads][rest]
                    prefix, rest, mask, _ = split_prefix(ids, mask, p)
                    ids = torch.cat([prefix.expand(len(rows), -1), rest], 1)
                    past = prefix_cache(hf, prefix, len(rows))
                if use_cache:
                    new = greedy_decode(hf, ids, mask, max_new_tokens, eos, pad, past)
                else:  # the reference: the model's own generate, recomputing every step
                    new = hf.generate(input_ids=ids, attention_mask=mask,
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      temperature=None, top_p=None, top_k=None,
                                      use_cache=False, pad_token_id=pad,
                                      logits_processor=LogitsProcessorList([_FiniteScores()]),
                                      )[:, ids.shape[1]:]
            ended = torch.isin(new, torch.as_tensor(eos, device=new.device))
            for i, row, end in zip(rows, new, ended):
                stop = int(end.nonzero()[0]) + 1 if bool(end.any()) else len(row)
                outputs[i] = tok.decode(row[:stop], skip_special_tokens=True)  # no padding
    finally:
        tok.padding_side = side
    return outputs


def generate(
    model: "LensModel",
    instructions: Sequence[str],
    fwd_hooks: Hooks = (),
    max_new_tokens: int = 64,
    batch_size: int = 16,
    system: str | None = None,
    use_cache: bool = True,
    progress: bool = True,
    **kwargs,
) -> list[str]:
    """Greedy completions of instructions (chat-formatted first) under ``fwd_hooks``; keyword
    arguments as in :func:`generate_from_prompts`."""
    return generate_from_prompts(
        model, model.format(instructions, system), fwd_hooks, max_new_tokens, batch_size,
        use_cache, progress, **kwargs,
    )
