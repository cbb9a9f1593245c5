"""Batched greedy generation under any set of TransformerLens hooks (KV cache on by default).

The wrapped Hugging Face model's own ``generate`` runs the hooks at every decoding step, so an
intervention given as ``(hook_name, fn)`` pairs applies to the prompt and to every generated
token. Hooks must therefore treat positions uniformly (ablation and addition do). Ablation and
addition hooks take the faster plain path of :mod:`refusal_lens.runner`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from tqdm.auto import tqdm

from .activations import length_batches
from .runner import prefix_cache, running, split_prefix, usable_prefix

if TYPE_CHECKING:
    from .model import LensModel

Hooks = Sequence[tuple[str, object]]


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
    is computed once and handed to ``generate`` as a KV cache (``share_prefix``); any other
    hook runs through the bridge, unshared.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    if not prompts:
        return []
    tok = model.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"  # generation appends on the right
    lengths = [len(ids) for ids in tok(list(prompts), add_special_tokens=False)["input_ids"]]
    batches = length_batches(lengths, batch_size, max_batch_tokens or batch_size * 64)
    outputs: list[str] = [""] * len(prompts)
    try:
        bar = tqdm(batches, desc=f"generating ({len(prompts)})", disable=not progress,
                   leave=False)
        for rows in bar:
            batch = model.tokenize([prompts[i] for i in rows])
            ids, mask = batch.input_ids, batch.attention_mask
            p = usable_prefix(model, fwd_hooks, ids, mask) if share_prefix and use_cache else 0
            with running(model, fwd_hooks, attn=attn) as hf:
                extra = {}
                if p:  # the shared prefix runs once; rows are laid out [prefix][pads][rest]
                    prefix, rest, mask, _ = split_prefix(ids, mask, p)
                    ids = torch.cat([prefix.expand(len(rows), -1), rest], 1)
                    extra["past_key_values"] = prefix_cache(hf, prefix, len(rows))
                out = hf.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    **extra,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    use_cache=use_cache,
                    pad_token_id=tok.pad_token_id,
                )
            new = out[:, ids.shape[1] :]
            for i, text in zip(rows, tok.batch_decode(new, skip_special_tokens=True)):
                outputs[i] = text
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
