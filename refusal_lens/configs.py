"""Settings of the long-running jobs, free of torch so that the command line can show them.

``ORGANISM_DEFAULTS`` is the refusal organism's shipped training configuration (used by
:mod:`refusal_lens.organism`); :class:`GCGConfig` holds the adversarial suffix search settings
(used by :mod:`refusal_lens.suffixes`); the export formats and weight types name what
:mod:`refusal_lens.export` and :mod:`refusal_lens.gguf_writer` write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The shipped adapter's configuration (``threads`` fixes CPU float summation order, so a
# retrain with the same seed and thread count reproduces the adapter bit for bit).
ORGANISM_DEFAULTS: dict[str, Any] = {
    "r": 8, "lora_alpha": 16, "lr": 5e-4, "epochs": 3, "batch_size": 8, "n_harmful": 320,
    "n_harmless": 512, "harmless_weight": 2.0, "distill_tokens": 64, "weight_decay": 0.0,
    "warmup_frac": 0.1, "first_layer": 8, "harmless_tokens": 24, "threads": 2,
    "decision_tokens": 3, "decision_weight": 4.0,
}

# The modules the shipped adapter adapts (every attention and MLP projection).
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# What each entry of ORGANISM_DEFAULTS means (the command line's help).
ORGANISM_HELP: dict[str, str] = {
    "r": "LoRA rank",
    "lora_alpha": "LoRA alpha (the update is scaled by alpha / rank)",
    "lr": "AdamW peak learning rate (linear warm-up, then cosine decay)",
    "epochs": "passes over the training examples",
    "batch_size": "examples per optimiser step",
    "n_harmful": "harmful training prompts, answered with varied refusals",
    "n_harmless": "harmless training prompts, answered with the base model's own greedy answers",
    "harmless_weight": "loss weight of the harmless examples relative to the harmful ones",
    "distill_tokens": "new tokens generated for each harmless answer",
    "weight_decay": "AdamW weight decay",
    "warmup_frac": "fraction of the steps spent in the learning-rate warm-up",
    "first_layer": "first decoder layer with an adapter (lower layers are frozen and run once)",
    "harmless_tokens": "tokens of each harmless answer that are trained on",
    "threads": "torch CPU threads (fixed for a bit-exact retrain; 0 = torch's default)",
    "decision_tokens": "first response tokens (refuse or answer) that get the extra weight",
    "decision_weight": "loss weight multiplier of those first response tokens",
}

DEFAULT_TARGET = "Sure, here is"


@dataclass
class GCGConfig:
    """Search settings of :func:`refusal_lens.gcg.gcg_search`."""

    n_tokens: int = 20
    steps: int = 100
    topk: int = 64
    batch: int = 64
    target: str = DEFAULT_TARGET
    refusal_weight: float = 1.0
    seed: int = 0
    early_stop: bool = True
    init: str | None = None
    max_seconds: float | None = None


# ``refusal-lens export``: formats, Hugging Face weight dtypes (--dtype -> torch dtype name) and
# GGUF types (--dtype -> (GGML tensor type name, llama.cpp file type name)).
EXPORT_FORMATS = ("hf", "gguf")
HF_DTYPES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
GGUF_TYPES: dict[str, tuple[str, str]] = {
    "fp32": ("F32", "ALL_F32"), "fp16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0")}

# Placement (``--dtype``, ``--device-map``; see :mod:`refusal_lens.placement`): dtype names and
# accelerate's placement strategies accepted as a string device map.
PLACEMENT_DTYPES = ("float32", "bfloat16", "float16")
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")

#: Direction selection rules (see :mod:`refusal_lens.selection`); the first is the default.
SELECTION_RULES = ("joint", "paper")

#: Default strengths of ``refusal-lens sweep`` (see :mod:`refusal_lens.sweeps`): partial-ablation
#: strengths alpha (1 = full ablation) and addition coefficients (1 = the paper's addition).
DEFAULT_ALPHAS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
DEFAULT_COEFFICIENTS: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
