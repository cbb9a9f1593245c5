"""Where the top DFA heads look from the last token: the instruction or the suffix
(Arditi et al. 2024, Fig. 6b), plus circuitsvis views of their attention patterns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .console import progress_bar
from .execution import collect
from .suffixes import MARK

if TYPE_CHECKING:
    from .model import LensModel

Head = tuple[int, int]


def check_heads(model: "LensModel", heads: Sequence[Head]) -> list[Head]:
    """Validate ``(layer, head)`` pairs against the model's shape."""
    heads = [(int(l), int(h)) for l, h in heads]
    if not heads:
        raise ValueError("No heads given: pass (layer, head) pairs, e.g. dfa.top_heads(8).")
    bad = [(l, h) for l, h in heads
           if not (0 <= l < model.n_layers and 0 <= h < model.n_heads)]
    if bad:
        raise ValueError(f"Heads {bad} out of range: {model.name} has layers "
                         f"0..{model.n_layers - 1} and heads 0..{model.n_heads - 1}.")
    return heads


def span_masks(
    model: "LensModel", instructions: Sequence[str], suffixes: Sequence[str | None]
) -> tuple[Bool[Tensor, "batch seq"], Bool[Tensor, "batch seq"], object]:
    """Token masks of the instruction and suffix spans in the left-padded batch of prompts.

    A token belongs to a span when its last character lies in the span's characters (found by
    rendering the chat template around a marker, then mapping with tokenizer offsets).
    """
    if len(instructions) != len(suffixes):
        raise ValueError("Pass one suffix (or None) per instruction.")
    users = [x if s is None else f"{x} {s.strip()}" for x, s in zip(instructions, suffixes)]
    prompts = model.format(users)
    starts = [model.format([MARK])[0].find(MARK)] * len(users)
    if starts[0] < 0:
        raise ValueError("The chat template alters the user text; cannot locate the spans.")
    enc = model.tokenizer(prompts, add_special_tokens=False, padding=True,
                          return_offsets_mapping=True, return_tensors="pt")
    ends = enc["offset_mapping"][..., 1]
    real = (enc["offset_mapping"][..., 1] > enc["offset_mapping"][..., 0]) & (
        enc["attention_mask"] > 0)
    inst = torch.zeros_like(real)
    suf = torch.zeros_like(real)
    for i, (x, s, a) in enumerate(zip(instructions, suffixes, starts)):
        last = ends[i] - 1
        inst[i] = real[i] & (last >= a) & (last < a + len(x))
        if s is not None:
            b = a + len(x) + 1
            suf[i] = real[i] & (last >= b) & (last < b + len(s.strip()))
    batch = model.tokenize(prompts)
    if not torch.equal(batch.input_ids.cpu(), enc["input_ids"]):
        raise RuntimeError("Offsets and model tokenization disagree.")
    return inst.to(model.device), suf.to(model.device), batch


@torch.no_grad()
def attention_to_spans(
    model: "LensModel",
    instructions: Sequence[str],
    heads: Sequence[Head],
    suffixes: Sequence[str | None] | None = None,
    batch_size: int = 16,
) -> dict[str, Float[Tensor, "prompt head"]]:
    """Attention mass from the last token to the instruction, the suffix and everything else.

    Returns ``{"instruction", "suffix", "other"}``, each (prompt, head); they sum to 1.
    """
    heads = check_heads(model, heads)
    suffixes = list(suffixes) if suffixes is not None else [None] * len(instructions)
    layers = sorted({l for l, _ in heads})
    out: dict[str, list[Tensor]] = {"instruction": [], "suffix": [], "other": []}
    for s in range(0, len(instructions), batch_size):
        inst, suf, batch = span_masks(model, instructions[s: s + batch_size],
                                      suffixes[s: s + batch_size])
        names = [f"blocks.{l}.attn.hook_pattern" for l in layers]
        (cap,) = collect(model, [batch], names)
        rows = torch.arange(batch.input_ids.shape[0])
        last = batch.ends.cpu() - 1
        pats = {l: cap.acts[n][rows.to(cap.acts[n].device), :, last.to(cap.acts[n].device)]
                .to(inst.device, torch.float64)  # (batch, head, key)
                for l, n in zip(layers, names)}
        p = torch.stack([pats[l][:, h] for l, h in heads], 1)  # (batch, k, key)
        a = (p * inst[:, None].to(p.dtype)).sum(-1)
        b = (p * suf[:, None].to(p.dtype)).sum(-1)
        out["instruction"].append(a.cpu())
        out["suffix"].append(b.cpu())
        out["other"].append((p.sum(-1) - a - b).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


@dataclass
class AttentionShift:
    """Per-condition attention mass of the given heads on the instruction and suffix spans."""

    heads: list[Head]
    mass: dict[str, dict[str, Float[Tensor, "prompt head"]]]  # condition -> span -> values

    def summary(self) -> dict[str, dict[str, list[float]]]:
        """``{condition: {span: mean per head}}``."""
        return {c: {s: v.mean(0).tolist() for s, v in d.items()} for c, d in self.mass.items()}

    def mean_over_heads(self) -> dict[str, dict[str, float]]:
        return {c: {s: float(v.mean()) for s, v in d.items()} for c, d in self.mass.items()}


def attention_shift(
    model: "LensModel",
    harmful: Sequence[str],
    heads: Sequence[Head],
    adversarial: str,
    random_suffixes: Sequence[str],
    batch_size: int = 16,
    progress: bool = True,
) -> AttentionShift:
    """Attention spans for harmful prompts alone, + adversarial suffix, + random suffixes."""
    heads = check_heads(model, heads)
    if not random_suffixes:
        raise ValueError("Pass at least one random suffix.")
    n = len(harmful)
    conds = {"harmful": [None] * n, "harmful + adversarial suffix": [adversarial] * n,
             "harmful + random suffix": [random_suffixes[i % len(random_suffixes)]
                                         for i in range(n)]}
    mass = {c: attention_to_spans(model, list(harmful), heads, s, batch_size)
            for c, s in progress_bar(conds.items(), desc="attention", disable=not progress,
                                     leave=False)}
    return AttentionShift(heads, mass)


@torch.no_grad()
def attention_pattern_html(
    model: "LensModel", instruction: str, heads: Sequence[Head], path: str | Path,
    suffix: str | None = None,
) -> Path:
    """Save circuitsvis attention views of ``heads`` on one prompt as an HTML file, each head
    named by layer and head (``L21H4``)."""
    import circuitsvis as cv

    from .paths import atomic_write_text

    heads = check_heads(model, heads)
    user = instruction if suffix is None else f"{instruction} {suffix.strip()}"
    batch = model.encode_instructions([user])
    names = {l: f"blocks.{l}.attn.hook_pattern" for l, _ in heads}
    (cap,) = collect(model, [batch], sorted(set(names.values())))
    pats = torch.stack([cap.acts[names[l]][0, h] for l, h in heads]).float().cpu()
    tokens = [model.tokenizer.decode([t]) for t in batch.input_ids[0].tolist()]
    labels = head_names(heads)
    html = cv.attention.attention_heads(attention=pats, tokens=tokens,
                                        attention_head_names=labels)
    title = (f"<h3>{_escape(model.name)} attention patterns ({', '.join(labels)})</h3>"
             f"<p>{_escape(user)}</p>")
    # local_src inlines the circuitsvis bundle, so the file opens offline.
    return atomic_write_text(Path(path).with_suffix(".html"),
                             f"<html><body>{title}{html.local_src}</body></html>")


def head_names(heads: Sequence[Head]) -> list[str]:
    """``["L21H4", ...]``: the names heads go by in figures and views."""
    return [f"L{l}H{h}" for l, h in heads]


def _escape(text: str) -> str:
    import html

    return html.escape(text)
