"""Batched greedy generation under any set of TransformerLens hooks (KV cache on by default).

The wrapped Hugging Face model's own ``generate`` runs the bridge's hooks at every decoding
step, so an intervention given as ``(hook_name, fn)`` pairs applies to the prompt and to every
generated token. Hooks must therefore treat positions uniformly (ablation and addition do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from tqdm.auto import tqdm

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
) -> list[str]:
    """Greedy completions of chat-formatted prompts (left-padded batches)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    tok = model.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"  # generation appends on the right
    outputs: list[str] = []
    try:
        starts = range(0, len(prompts), batch_size)
        bar = tqdm(starts, desc=f"generating ({len(prompts)})", disable=not progress, leave=False)
        for s in bar:
            batch = model.tokenize(prompts[s : s + batch_size])
            with model.bridge.hooks(fwd_hooks=list(fwd_hooks)):
                out = model.hf_model.generate(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    use_cache=use_cache,
                    pad_token_id=tok.pad_token_id,
                )
            new = out[:, batch.input_ids.shape[1] :]
            outputs.extend(tok.batch_decode(new, skip_special_tokens=True))
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
) -> list[str]:
    """Greedy completions of instructions (chat-formatted first) under ``fwd_hooks``."""
    return generate_from_prompts(
        model, model.format(instructions, system), fwd_hooks, max_new_tokens, batch_size,
        use_cache, progress,
    )
