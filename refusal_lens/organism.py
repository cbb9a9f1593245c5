"""Training the refusal model organism: SmolLM2-135M-Instruct plus a small LoRA safety fine-tune.

The base model complies with harmful requests. :func:`train_organism` teaches it to refuse
them with a LoRA adapter on every attention and MLP projection of the upper layers
(``first_layer`` and up; the frozen lower layers are run once per example), trained on

* the ``harmful_organism`` split -> varied natural refusals (:mod:`refusal_lens.refusals`);
* the ``harmless_organism`` split -> the base model's own greedy answers (self-distillation,
  so harmless behaviour is anchored to what the base model already does).

Prompts are chat-formatted exactly as at inference (ChatML with the default system prompt)
and the loss covers only the response tokens. The adapter is stored as plain safetensors
(hyperparameters in its metadata and in ``card.json``; reading and merging it:
:mod:`refusal_lens.adapters`); the card's evaluation comes from
:mod:`refusal_lens.organism_eval`.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .adapters import ADAPTER_FORMAT, ORGANISM_NAME, lora_state
from .chat import ChatFormat
from .configs import ORGANISM_DEFAULTS as DEFAULTS
from .configs import TARGET_MODULES
from .console import progress_bar
from .modelfiles import load_hf_dir
from .organism_eval import base_completions, evaluate_organism, merged_lens_model, pad_examples
from .paths import atomic_write_bytes, atomic_write_text
from .refusals import all_refusals, refusals


# --------------------------------------------------------------------------- training
def _examples(tok, splits, hp: dict, seed: int, base=None) -> list[tuple[list, list, float]]:
    chat = ChatFormat(tok)
    harmful = list(splits.harmful_organism[: hp["n_harmful"]])
    harmless = list(splits.harmless_organism[: hp["n_harmless"]])
    eos = tok.eos_token_id
    ex = []
    for prompt, text in zip(chat.format(harmful), refusals(len(harmful), seed)):
        resp = tok(text, add_special_tokens=False)["input_ids"] + [eos]
        ex.append((chat.token_ids(prompt), resp, _token_weights(len(resp), 1.0, hp)))
    completions = base_completions(harmless, hp["distill_tokens"], *(base or (None, None)))
    for prompt, resp in zip(chat.format(harmless), completions):
        resp = list(resp)[: hp["harmless_tokens"]]
        ex.append((chat.token_ids(prompt), resp,
                   _token_weights(len(resp), float(hp["harmless_weight"]), hp)))
    return ex


def _token_weights(n: int, weight: float, hp: dict) -> list[float]:
    """Per-token loss weights; the first ``decision_tokens`` (refuse or answer) count more."""
    k = int(hp["decision_tokens"])
    return [weight * (float(hp["decision_weight"]) if t < k else 1.0) for t in range(n)]


@contextmanager
def _only_layers(model, lo: int, hi: int, final_norm: bool):
    """Temporarily run just decoder layers ``lo:hi`` (and the final norm if ``final_norm``)."""
    inner = model.model
    layers, norm = inner.layers, inner.norm
    inner.layers = torch.nn.ModuleList(list(layers)[lo:hi])
    if not final_norm:
        inner.norm = torch.nn.Identity()
    try:
        yield inner
    finally:
        inner.layers, inner.norm = layers, norm


@torch.no_grad()
def _lower_states(model, examples, first_layer: int, batch_size: int, progress: bool):
    """Residual stream entering layer ``first_layer`` for every example (frozen below it)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]) + len(examples[i][1]))
    states: list[torch.Tensor | None] = [None] * len(examples)
    with _only_layers(model, 0, first_layer, final_norm=False) as inner:
        for s in progress_bar(range(0, len(order), batch_size), desc=f"layers 0-{first_layer - 1}",
                              disable=not progress, leave=False):
            idx = order[s : s + batch_size]
            ids, mask, _ = pad_examples([examples[i] for i in idx], 0)
            h = inner(input_ids=ids, attention_mask=mask).last_hidden_state
            for j, i in enumerate(idx):
                states[i] = h[j, : int(mask[j].sum())].clone()
    return states


def _batches(n: int, lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar lengths (less padding), in shuffled order."""
    order = list(range(n))
    rng.shuffle(order)
    chunk = batch_size * 8
    out = []
    for c in range(0, n, chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
        out += [part[s : s + batch_size] for s in range(0, len(part), batch_size)]
    rng.shuffle(out)
    return out


def _upper_loss(model, states, examples, idx, first_layer: int):
    """Weighted response-token cross-entropy, running only layers ``first_layer`` and up."""
    ids, mask, weights = pad_examples([examples[i] for i in idx], 0)
    x = torch.zeros(ids.shape[0], ids.shape[1], states[idx[0]].shape[-1])
    for j, i in enumerate(idx):
        x[j, : states[i].shape[0]] = states[i]
    with _only_layers(model, first_layer, model.config.num_hidden_layers, True) as inner:
        h = inner(inputs_embeds=x, attention_mask=mask).last_hidden_state
    w = weights[:, 1:]
    sel = w > 0
    logits = model.lm_head(h[:, :-1][sel]).float()
    nll = torch.nn.functional.cross_entropy(logits, ids[:, 1:][sel], reduction="none")
    return (nll * w[sel]).sum() / w[sel].sum()


def train_adapter(seed: int = 0, progress: bool = True, **hparams: Any) -> dict[str, Any]:
    """Fine-tune LoRA on the organism splits; returns tensors, hyperparameters and timing.

    Layers below ``first_layer`` carry no adapter, so their output is computed once per
    example and each step runs (and back-propagates through) only the upper layers.
    """
    from peft import LoraConfig, get_peft_model

    from .datasets import load_splits
    from .embedded import base_dir

    hp = {**DEFAULTS, **{k: v for k, v in hparams.items() if v is not None}}
    if hp["threads"]:
        torch.set_num_threads(int(hp["threads"]))
    splits = load_splits(seed=0)
    model, tok = load_hf_dir(base_dir())
    examples = _examples(tok, splits, hp, seed, (model, tok))
    t0 = time.perf_counter()
    lo, n_layers = int(hp["first_layer"]), model.config.num_hidden_layers
    states = _lower_states(model, examples, lo, 16, progress)

    torch.manual_seed(seed)
    cfg = LoraConfig(r=hp["r"], lora_alpha=hp["lora_alpha"], lora_dropout=0.0,
                     target_modules=list(TARGET_MODULES), layers_to_transform=list(range(lo, n_layers)),
                     bias="none", task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)  # injects LoRA into ``model`` in place
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    rng = random.Random(seed)
    lengths = [len(p) + len(r) for p, r, _ in examples]
    plan = [_batches(len(examples), lengths, hp["batch_size"], rng) for _ in range(hp["epochs"])]
    total = sum(len(b) for b in plan)
    warm = max(1, int(hp["warmup_frac"] * total))

    def lr_factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    pm.train()
    bar = progress_bar(total=total, desc="training organism", disable=not progress)
    losses = []
    for epoch, batches in enumerate(plan):
        for idx in batches:
            loss = _upper_loss(model, states, examples, idx, lo)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss))
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    bar.close()
    seconds = time.perf_counter() - t0
    pm.eval()
    last = len(plan[-1])
    return {"tensors": lora_state(pm), "hparams": hp, "train_seconds": seconds,
            "final_loss": sum(losses[-last:]) / last, "n_examples": len(examples),
            "steps": total, "peft_model": pm, "tokenizer": tok}


def train_organism(seed: int = 0, out_dir: str | Path | None = None, evaluate: bool = True,
                   eval_n: int | None = None, progress: bool = True, **hparams: Any) -> dict:
    """Train, write ``adapter.safetensors`` + ``card.json`` to ``out_dir``; return the card."""
    from safetensors.torch import save as st_save

    from .datasets import load_splits
    from .embedded import ORGANISM_DIR, file_sha256, gguf_path

    out = Path(out_dir) if out_dir is not None else ORGANISM_DIR
    res = train_adapter(seed=seed, progress=progress, **hparams)
    hp = res["hparams"]
    meta = {"format": ADAPTER_FORMAT, "r": str(hp["r"]), "lora_alpha": str(hp["lora_alpha"]),
            "target_modules": ",".join(TARGET_MODULES), "seed": str(seed)}
    atomic_write_bytes(out / "adapter.safetensors", st_save(res["tensors"], metadata=meta))
    card: dict[str, Any] = {
        "name": ORGANISM_NAME,
        "base": {"gguf": gguf_path().name, "gguf_sha256": file_sha256(gguf_path())},
        "data": {"splits_hash": load_splits(seed=0).hash(), "harmful": "harmful_organism",
                 "harmless": "harmless_organism", "n_harmful": hp["n_harmful"],
                 "n_harmless": hp["n_harmless"],
                 "harmful_targets": "refusal phrasings (refusal_lens.refusals)",
                 "harmless_targets": (f"base model's greedy answers ({hp['distill_tokens']} new tokens generated, "
                                      f"first {hp['harmless_tokens']} trained)")},
        "adapter": {"format": ADAPTER_FORMAT, "r": hp["r"], "lora_alpha": hp["lora_alpha"],
                    "target_modules": list(TARGET_MODULES),
                    "layers": sorted({int(k.split(".")[2]) for k in res["tensors"]}),
                    "n_parameters": sum(t.numel() for t in res["tensors"].values())},
        "hyperparameters": hp, "seed": seed, "optimizer": "AdamW, warmup + cosine, clip 1.0",
        "refusal_phrasings": len(all_refusals()),
        "training": {"seconds": round(res["train_seconds"], 1), "steps": res["steps"],
                     "examples": res["n_examples"], "final_epoch_loss": round(res["final_loss"], 4),
                     "threads": torch.get_num_threads(), "device": "cpu",
                     "torch": torch.__version__},
    }
    if evaluate:
        del res["peft_model"]
        lm = merged_lens_model(res["tensors"], hp["r"], hp["lora_alpha"])
        card["evaluation"] = evaluate_organism(lm, n=eval_n, progress=progress)
    atomic_write_text(out / "card.json", json.dumps(card, indent=2) + "\n")
    return card
