"""The refusal organism's evaluation: refusal rates, capability kept, and a retrain's match.

:func:`evaluate_organism` is what ``card.json``'s ``evaluation`` records and
``refusal-lens organism eval`` prints; :func:`record_reproduction` compares a second same-seed
training run with the shipped one. The base model's greedy answers (:func:`base_completions`)
serve twice: as the harmless training targets and as the texts whose cross-entropy measures
the capability kept.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from .adapters import apply_lora_, read_adapter
from .chat import ChatFormat
from .console import progress_bar
from .modelfiles import load_hf_dir
from .paths import atomic_write_text, cache_dir
from .scoring import refusal_rate

EVAL_TOKENS = 64
CE_TOKENS = 64


@torch.no_grad()
def greedy_ids(model, tok, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
               desc: str = "generating") -> list[list[int]]:
    """Greedy response token ids per formatted prompt, cut after the first eos (kept).

    Kept beside :func:`refusal_lens.generation.generate` on purpose: these ids are the
    harmless training targets of the shipped adapter, and its bit-for-bit retrain
    (``card.json``'s ``reproduction``) needs exactly this computation (Hugging Face
    ``generate`` on batches of 16, ids rather than decoded text).
    """
    eos = tok.eos_token_id
    out: list[list[int]] = []
    for s in progress_bar(range(0, len(prompts), batch_size), desc=desc, leave=False):
        enc = tok(list(prompts[s : s + batch_size]), add_special_tokens=False, padding=True,
                  return_tensors="pt")
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             temperature=None, top_p=None, top_k=None,
                             pad_token_id=tok.pad_token_id)
        for row in gen[:, enc["input_ids"].shape[1] :].tolist():
            out.append(row[: row.index(eos) + 1] if eos in row else row)
    return out


def base_completions(instructions: Sequence[str], max_new_tokens: int, model=None,
                     tok=None) -> list[list[int]]:
    """The base model's greedy response ids for ``instructions``, cached under cache_dir()."""
    from .embedded import base_dir, file_sha256, gguf_path

    key = hashlib.sha256(json.dumps(
        {"v": 1, "gguf": file_sha256(gguf_path()), "n": max_new_tokens,
         "instructions": list(instructions)}).encode()).hexdigest()[:20]
    path = cache_dir() / "organism" / f"base_completions-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())["ids"]
    if model is None:
        model, tok = load_hf_dir(base_dir())
    ids = greedy_ids(model, tok, ChatFormat(tok).format(list(instructions)), max_new_tokens,
                     desc="base completions")
    atomic_write_text(path, json.dumps({"instructions": list(instructions), "ids": ids}))
    return ids


def pad_examples(examples, pad_id: int):
    """Right-padded ids, mask and per-token loss weights of ``(prompt ids, response ids,
    weight)`` examples; the weight sits on each response token's position."""
    n = max(len(p) + len(r) for p, r, _ in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    weights = torch.zeros(len(examples), n)
    for i, (p, r, w) in enumerate(examples):
        seq = p + r
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        # weight on the response token predicted at each position (scalar or per token)
        weights[i, len(p) : len(seq)] = torch.as_tensor(w, dtype=weights.dtype)
    return ids, mask, weights


def merged_lens_model(tensors: dict[str, torch.Tensor], r: int, lora_alpha: float):
    """A ``LensModel`` of base + adapter, merged in memory (nothing written)."""
    from .adapters import ORGANISM_NAME
    from .embedded import base_dir
    from .model import wrap_hf

    model, tok = load_hf_dir(base_dir())
    apply_lora_(model, tensors, r, lora_alpha)
    return wrap_hf(model, tok, ORGANISM_NAME, source=base_dir())


@torch.no_grad()
def response_ce(hf_model, tok, instructions: Sequence[str], responses: Sequence[list[int]],
                batch_size: int = 16) -> float:
    """Mean per-token cross-entropy (nats) of ``responses`` given the chat-formatted prompts.

    Kept beside :func:`refusal_lens.scoring.completion_cross_entropy` on purpose: it scores
    token ids (the base model's greedy ids, eos included) where the library re-tokenizes
    decoded text, which changes the tokens; the shipped card's ``harmless_ce_*`` numbers
    and their reproduction were measured with it.
    """
    chat = ChatFormat(tok)
    prompts = [chat.token_ids(p) for p in chat.format(list(instructions))]
    ex = [(p, list(r), 1.0) for p, r in zip(prompts, responses)]
    total, count = 0.0, 0.0
    for s in range(0, len(ex), batch_size):
        ids, mask, w = pad_examples(ex[s : s + batch_size], tok.pad_token_id)
        logits = hf_model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        total += float((nll * w[:, 1:].reshape(-1)).sum())
        count += float(w[:, 1:].sum())
    return total / count


def evaluate_organism(model, base_model=None, n: int | None = None, max_new_tokens: int = EVAL_TOKENS,
                      progress: bool = True, samples: int = 3) -> dict[str, Any]:
    """Refusal rates on held-out ``harmful_test`` / ``harmless_test`` and capability kept.

    Capability: cross-entropy of the base model's own greedy answers to ``harmless_test``
    under ``model`` versus under the base model (``base_model`` or the embedded base).
    """
    from .datasets import load_splits
    from .generation import generate

    splits = load_splits(seed=0)
    harmful, harmless = list(splits.harmful_test[:n]), list(splits.harmless_test[:n])
    out_h = generate(model, harmful, max_new_tokens=max_new_tokens, progress=progress)
    out_l = generate(model, harmless, max_new_tokens=max_new_tokens, progress=progress)
    if base_model is None:
        from .embedded import base_dir

        base_hf, base_tok = load_hf_dir(base_dir())
    else:
        base_hf, base_tok = base_model.hf_model, base_model.tokenizer
    answers = base_completions(splits.harmless_test, CE_TOKENS, base_hf, base_tok)[: len(harmless)]
    ce_model = response_ce(model.hf_model, model.tokenizer, harmless, answers)
    ce_base = response_ce(base_hf, base_tok, harmless, answers)
    return {
        "n_harmful": len(harmful), "n_harmless": len(harmless), "max_new_tokens": max_new_tokens,
        "harmful_refusal_rate": refusal_rate(out_h), "harmless_refusal_rate": refusal_rate(out_l),
        "harmless_ce_model": round(ce_model, 4), "harmless_ce_base": round(ce_base, 4),
        "harmless_ce_ratio": round(ce_model / ce_base, 4),
        "samples": {"harmful": [[q, a] for q, a in zip(harmful[:samples], out_h)],
                    "harmless": [[q, a] for q, a in zip(harmless[:samples], out_l)]},
    }


def record_reproduction(out_dir: Path, other_dir: Path) -> dict[str, Any]:
    """Compare a second same-seed training run (in ``other_dir``) with ``out_dir``'s; store it.

    Records the largest absolute difference between the two adapters' tensors and, per
    refusal/CE metric both runs measured on the same number of prompts, the absolute gap.
    """
    out_dir, other_dir = Path(out_dir), Path(other_dir)
    card = json.loads((out_dir / "card.json").read_text())
    other = json.loads((other_dir / "card.json").read_text())
    ta, _ = read_adapter(out_dir / "adapter.safetensors")
    tb, _ = read_adapter(other_dir / "adapter.safetensors")
    diff = max(float((ta[k] - tb[k]).abs().max()) for k in ta) if ta.keys() == tb.keys() else None
    a, b = card.get("evaluation", {}), other.get("evaluation", {})
    keys = ("harmful_refusal_rate", "harmless_refusal_rate", "harmless_ce_ratio")
    rep: dict[str, Any] = {
        "seed": other["seed"], "training_seconds": other["training"]["seconds"],
        "adapter_max_abs_diff": diff, "evaluation": {k: b.get(k) for k in
                                                     ("n_harmful", "n_harmless", *keys)},
    }
    if a.get("n_harmful") == b.get("n_harmful") and a.get("n_harmless") == b.get("n_harmless"):
        rep["abs_diff"] = {k: round(abs(a[k] - b[k]), 4) for k in keys}
    card["reproduction"] = rep
    atomic_write_text(out_dir / "card.json", json.dumps(card, indent=2) + "\n")
    return card
