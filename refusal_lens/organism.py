"""The refusal model organism: SmolLM2-135M-Instruct plus a small LoRA safety fine-tune.

The base model complies with harmful requests. :func:`train_organism` teaches it to refuse
them with a LoRA adapter on every attention and MLP projection of the upper layers
(``first_layer`` and up; the frozen lower layers are run once per example), trained on

* the ``harmful_organism`` split -> varied natural refusals (:mod:`refusal_lens.refusals`);
* the ``harmless_organism`` split -> the base model's own greedy answers (self-distillation,
  so harmless behaviour is anchored to what the base model already does).

Prompts are chat-formatted exactly as at inference (ChatML with the default system prompt)
and the loss covers only the response tokens. The adapter is stored as plain safetensors
(hyperparameters in its metadata and in ``card.json``); :func:`merge_adapter_into` folds it
into the base weights for ``load_model("embedded")``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import torch

from .configs import ORGANISM_DEFAULTS as DEFAULTS
from .console import progress_bar
from .paths import atomic_write_bytes, atomic_write_text, cache_dir
from .refusals import all_refusals, refusals
from .scoring import refusal_rate

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_FORMAT = "refusal_lens-lora-v1"
EVAL_TOKENS = 64
CE_TOKENS = 64


# --------------------------------------------------------------------------- loading
def _load_hf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return model, tok


def _chat(tok):
    from .chat import ChatFormat

    return ChatFormat(tok)


# --------------------------------------------------------------------------- distillation
@torch.no_grad()
def greedy_ids(model, tok, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
               desc: str = "generating") -> list[list[int]]:
    """Greedy response token ids per formatted prompt, cut after the first eos (kept)."""
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
        model, tok = _load_hf(base_dir())
    ids = greedy_ids(model, tok, _chat(tok).format(list(instructions)), max_new_tokens,
                     desc="base completions")
    atomic_write_text(path, json.dumps({"instructions": list(instructions), "ids": ids}))
    return ids


# --------------------------------------------------------------------------- adapter I/O
def lora_state(peft_model) -> dict[str, torch.Tensor]:
    """LoRA A/B tensors keyed ``<module>.lora_A.weight`` with base-model module names."""
    out = {}
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            clean = name.replace("base_model.model.", "", 1).replace(".default", "")
            out[clean] = p.detach().to(torch.float32).contiguous().clone()
    return out


def read_adapter(adapter_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and hyperparameters of an adapter file (safetensors only, no pickle)."""
    from safetensors import safe_open

    tensors = {}
    with safe_open(str(adapter_path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
        for k in fh.keys():
            tensors[k] = fh.get_tensor(k)
    if meta.get("format") != ADAPTER_FORMAT:
        card = Path(adapter_path).with_name("card.json")
        if not card.is_file():
            raise ValueError(f"{adapter_path}: no adapter metadata and no card.json beside it.")
        meta = {**json.loads(card.read_text())["adapter"], **meta}
    cfg = {"r": int(meta["r"]), "lora_alpha": float(meta["lora_alpha"])}
    return tensors, cfg


def apply_lora_(model, tensors: dict[str, torch.Tensor], r: int, lora_alpha: float) -> int:
    """Add ``(alpha / r) * B @ A`` to each targeted weight in place; returns modules merged."""
    scale = lora_alpha / r
    modules = dict(model.named_modules())
    names = sorted({k.rsplit(".lora_", 1)[0] for k in tensors})
    with torch.no_grad():
        for name in names:
            if name not in modules:
                raise KeyError(f"adapter module {name!r} is not in the base model")
            a, b = tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"]
            w = modules[name].weight
            w += (scale * (b.double() @ a.double())).to(w.dtype)
    return len(names)


def merge_adapter_into(base_dir: Path, adapter_path: Path, out: Path) -> Path:
    """Load the base HF model, merge the LoRA adapter into it and save model + tokenizer."""
    model, tok = _load_hf(Path(base_dir))
    tensors, cfg = read_adapter(Path(adapter_path))
    apply_lora_(model, tensors, cfg["r"], cfg["lora_alpha"])
    model.config.name_or_path = "SmolLM2-135M-Instruct-refusal-organism"
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# --------------------------------------------------------------------------- training
def _examples(tok, splits, hp: dict, seed: int, base=None) -> list[tuple[list, list, float]]:
    chat = _chat(tok)
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


def _batch(examples, pad_id: int):
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
            ids, mask, _ = _batch([examples[i] for i in idx], 0)
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
    ids, mask, weights = _batch([examples[i] for i in idx], 0)
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
    model, tok = _load_hf(base_dir())
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


def merged_lens_model(tensors: dict[str, torch.Tensor], r: int, lora_alpha: float):
    """A ``LensModel`` of base + adapter, merged in memory (nothing written)."""
    from .embedded import base_dir
    from .model import wrap_hf

    model, tok = _load_hf(base_dir())
    apply_lora_(model, tensors, r, lora_alpha)
    return wrap_hf(model, tok, "SmolLM2-135M-Instruct-refusal-organism", source=base_dir())


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
        "name": "SmolLM2-135M-Instruct-refusal-organism",
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


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def response_ce(hf_model, tok, instructions: Sequence[str], responses: Sequence[list[int]],
                batch_size: int = 16) -> float:
    """Mean per-token cross-entropy (nats) of ``responses`` given the chat-formatted prompts."""
    chat = _chat(tok)
    prompts = [chat.token_ids(p) for p in chat.format(list(instructions))]
    ex = [(p, list(r), 1.0) for p, r in zip(prompts, responses)]
    total, count = 0.0, 0.0
    for s in range(0, len(ex), batch_size):
        ids, mask, w = _batch(ex[s : s + batch_size], tok.pad_token_id)
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

        base_hf, base_tok = _load_hf(base_dir())
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
