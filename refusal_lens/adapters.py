"""LoRA adapter files: read them, merge them into base weights, and extract them from peft.

The refusal organism's adapter (:mod:`refusal_lens.organism` trains it) is stored as plain
safetensors: the LoRA ``A``/``B`` tensors keyed by base-model module names, with ``r`` and
``lora_alpha`` in the file's metadata (or in the ``card.json`` beside it).
:func:`merge_adapter_into` folds it into the base weights for ``load_model("embedded")``; this
module sits beside :mod:`refusal_lens.embedded` so loading a model imports no training code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .modelfiles import load_hf_dir

ADAPTER_FORMAT = "refusal_lens-lora-v1"
ORGANISM_NAME = "SmolLM2-135M-Instruct-refusal-organism"


def lora_state(peft_model: Any) -> dict[str, torch.Tensor]:
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


def apply_lora_(model: Any, tensors: dict[str, torch.Tensor], r: int, lora_alpha: float) -> int:
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


def merged_hf_model(base_dir: Path, tensors: dict[str, torch.Tensor], r: int,
                    lora_alpha: float) -> tuple[Any, Any]:
    """The base HF model (float32) with the adapter merged in memory, and its tokenizer."""
    model, tok = load_hf_dir(Path(base_dir))
    apply_lora_(model, tensors, r, lora_alpha)
    return model, tok


def merge_adapter_into(base_dir: Path, adapter_path: Path, out: Path) -> Path:
    """Load the base HF model, merge the LoRA adapter into it and save model + tokenizer."""
    tensors, cfg = read_adapter(Path(adapter_path))
    model, tok = merged_hf_model(base_dir, tensors, cfg["r"], cfg["lora_alpha"])
    model.config.name_or_path = ORGANISM_NAME
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
