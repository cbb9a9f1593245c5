"""Batched greedy generation under interventions (KV cache on by default).

Prompts are batched by length and decoded by :func:`refusal_lens.execution.decode` (a
KV-cached greedy loop), so an intervention applies to the prompt and to every generated token:
it must treat positions uniformly (ablation and addition do). A row that has ended leaves the
batch, so a batch of refusals (~30 tokens) no longer decodes to the longest answer in it; the
text equals what the model's own uncached ``generate`` gives (tested). ``interventions=``
(values from :mod:`refusal_lens.interventions`) may take the faster plain path of
:mod:`refusal_lens.execution`; ``fwd_hooks=`` (any TransformerLens hooks) run on the bridge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from .batching import length_batches
from .console import progress_bar
from .errors import InputError, InputTypeError
from .execution import Intervention, decode

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
    interventions: Sequence[Intervention] = (),
    backend: str = "auto",
) -> list[str]:
    """Greedy completions of chat-formatted prompts, returned in input order.

    Prompts are batched by token length (left padding; see :func:`length_batches`, with
    ``max_batch_tokens`` defaulting to ``batch_size * 64``). On the plain path of
    :mod:`refusal_lens.execution` (``interventions`` only) decoding uses ``attn`` attention and
    a token prefix shared by a whole batch (the system turn) is computed once and reused
    through the KV cache (``share_prefix``); ``fwd_hooks`` run through the bridge, unshared.
    ``use_cache=False`` runs the model's own ``generate`` without a cache (the slow
    reference).
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
            new = decode(model, batch, max_new_tokens, eos, pad, interventions, fwd_hooks, attn,
                         share_prefix, use_cache, backend)
            ended = torch.isin(new, torch.as_tensor(eos, device=new.device))
            for i, row, end in zip(rows, new, ended):
                stop = int(end.nonzero()[0]) + 1 if bool(end.any()) else len(row)
                outputs[i] = tok.decode(row[:stop], skip_special_tokens=True)  # no padding
    finally:
        tok.padding_side = side
    return outputs


def generate(model: "LensModel", instructions: Sequence[str], fwd_hooks: Hooks = (), *,
             system: str | None = None, **options: Any) -> list[str]:
    """Greedy completions of instructions, chat-formatted first (with ``system``), under
    ``fwd_hooks`` (or ``interventions=``); ``options`` are :func:`generate_from_prompts`'
    (``max_new_tokens``, ``batch_size``, ``progress``, ...)."""
    return generate_from_prompts(model, model.format(instructions, system), fwd_hooks, **options)
